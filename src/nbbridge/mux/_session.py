"""The mux session: one byte stream carrying many channels, each with its own flow control.

A MuxSession is a Twisted protocol; put it on anything that carries bytes in order (a TCP
connection, an in-memory pipe, the plaintext side of a SecureProtocol over a WebSocket).
It owns the channel table: ``channels`` (open, by id) and ``opening`` (waiting for OPEN_OK).
The side created with ``initiator=True`` uses odd channel ids, the other even ones, so ids
chosen by the two ends never collide.

Errors are contained: a bad frame for one channel resets that channel; bytes that are not
frames at all end the session with a GOAWAY naming the problem. Nothing raises out of
``dataReceived``.

Resumption (docs/resume.md): a session made with ``resume_grace`` whose peer agreed (HELLO)
outlives its link. When the link is lost it is *suspended*: its channels stay, paused, and
each keeps the bytes it sent that the peer has not acknowledged. Attached to a new link (a
fresh Noise handshake, through a :class:`LinkEnd`), the client sends RESUME with each
channel's position and a proof bound to the new handshake; the agent answers RESUMED with
its own; each side re-sends what the other lacks and the channels go on. Past the grace
period, or if the peer cannot resume, the channels are reset with a log line saying why.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nbbridge._observer import OneShotObserver
from nbbridge.wire import (
    MAX_CHANNEL_ID,
    MAX_PAYLOAD,
    Ack,
    Close,
    Data,
    Frame,
    FrameDecoder,
    FrameError,
    GoAway,
    Hello,
    Open,
    OpenFail,
    OpenOk,
    Reason,
    Reset,
    Resume,
    Resumed,
    Window,
    data_header,
    encode,
    encode_window,
)

from ._acceptor import Acceptor, OpenRequest
from ._channel import Channel
from ._errors import ChannelOpenFailed, SessionClosed, TooManyChannels, open_failure
from ._resumable import LinkEnd, Resumable
from ._resume import (
    ResumeSecrets,
    SessionRegistry,
)

DEFAULT_WINDOW = 256 * 1024
#: A new channel's first window, while the session can lend it: a short transfer (a file of a
#: few MB) then goes through without waiting for credit, which took it some three round
#: trips through three processes when every channel started at DEFAULT_WINDOW.
DEFAULT_START_WINDOW = 4 * 1024 * 1024
DEFAULT_MAX_WINDOW = 4 * 1024 * 1024
#: The most window beyond DEFAULT_WINDOW a session lends its channels in all (first windows
#: and growth): it bounds the memory that channels can hold if their consumers stall. At most
#: half of it goes to first windows, so channels that stay open idle after their first
#: transfer cannot take what fast channels grow into.
DEFAULT_WINDOW_BUDGET = 64 * 1024 * 1024
_RECENT = 4096


#: Channels per session (open, and being opened), and opens from the peer in progress.
DEFAULT_MAX_CHANNELS = 4096
DEFAULT_MAX_PENDING_ACCEPTS = 1024


@attrs.frozen
class ChannelLimits:
    """How many channels one session may hold, and how many of the peer's opens may be in
    progress at once (each is a connect to a service): set per daemon (``--max-channels``,
    ``--max-pending-opens``) and handed to each session it makes."""

    max_channels: int = DEFAULT_MAX_CHANNELS
    max_pending_accepts: int = DEFAULT_MAX_PENDING_ACCEPTS


#: What a daemon uses unless told otherwise.
DEFAULT_CHANNEL_LIMITS = ChannelLimits()


@implementer(IPushProducer)
class MuxSession(Resumable, Protocol):
    """One end of a multiplexed session.

    :param initiator: True on the side that dialled; it picks odd channel ids.
    :param acceptor: decides what an OPEN from the peer connects to; None refuses all.
    :param window: receive credit every channel has, lent or not.
    :param start_window: a new channel's first window while the budget's first half lasts.
    :param max_window: how far a fast channel's window may grow.
    :param window_budget: the most window beyond ``window`` lent to all channels together,
        so (with ``window`` times the channels) the most we buffer for stalled consumers.
    :param clock: fires ``when_closed`` waiters on a later turn (None: the global reactor).
    """

    _log = Logger()

    def __init__(
        self,
        *,
        initiator: bool,
        acceptor: Acceptor | None = None,
        window: int = DEFAULT_WINDOW,
        start_window: int = DEFAULT_START_WINDOW,
        max_window: int = DEFAULT_MAX_WINDOW,
        window_budget: int = DEFAULT_WINDOW_BUDGET,
        max_channels: int = DEFAULT_MAX_CHANNELS,
        max_pending_accepts: int = DEFAULT_MAX_PENDING_ACCEPTS,
        label: str = "mux",
        clock: IReactorTime | None = None,
        resume_grace: float | None = None,
        registry: SessionRegistry | None = None,
    ) -> None:
        if not 0 < window <= 0x7FFFFFFF:
            raise ValueError(f"window must be between 1 and 2**31-1, not {window}")
        self.label = label
        self.max_window = max(window, min(max_window, 0x7FFFFFFF))
        self._start_loan = max(0, min(start_window, self.max_window) - window)
        self._window_budget = window_budget
        #: what first windows may not take from the budget: the half kept for growth
        self._growth_reserve = window_budget // 2
        self.channels: dict[int, Channel] = {}
        self.opening: dict[int, Deferred[Channel]] = {}
        #: service, metadata and the first-window loan of each OPEN we sent, until answered
        self._open_requests: dict[int, tuple[str, tuple[tuple[str, str], ...], int]] = {}
        self._initiator = initiator
        self._acceptor = acceptor
        self._window = window
        self._max_channels = max_channels
        self._max_pending_accepts = max_pending_accepts
        #: OPENs from the peer whose service connection is being made, by channel id
        self._accepting: dict[int, tuple[Deferred[IProtocol], Channel]] = {}
        #: channels we closed both ways first, until the peer's CLOSE: the bytes received
        self._draining: OrderedDict[int, int] = OrderedDict()
        self._recently_closed: OrderedDict[int, None] = OrderedDict()
        self._next_id = 1 if initiator else 2
        self._decoder = FrameDecoder()
        self._paused = False
        self._closed_reason: str | None = None
        if clock is None:
            # Sessions built outside a service (tests, benchmarks) use the running reactor.
            from twisted.internet import reactor as clock
        assert clock is not None
        self._ended: OneShotObserver[str] = OneShotObserver(clock)
        self._clock = clock
        self._connected = False
        # Resumption: the grace period we offer (None: never resumable), the agent's table.
        self._grace = resume_grace
        self._registry = registry
        self._secrets: ResumeSecrets | None = None
        self._peer_key: object | None = None
        self._peer_grace: int | None = None
        self._suspended_at: float | None = None
        self._grace_call: IDelayedCall | None = None
        #: the client sent RESUME and waits for RESUMED: nothing else may go out meanwhile
        self._resuming = False
        #: channels closed here whose last bytes or CLOSE the peer has not acknowledged
        self._finishing: dict[int, Channel] = {}
        #: the LinkEnd this session is attached through (None: used as a plain protocol)
        self._link: LinkEnd | None = None
        self._handed_to: MuxSession | None = None
        #: told when the session is usable on a link (fresh, or resumed), suspended, resumed
        self.on_ready: Callable[[MuxSession], None] | None = None
        self.on_suspended: Callable[[str], None] | None = None
        self.on_resumed: Callable[[float], None] | None = None
        #: how often this session was suspended and resumed; the last suspension's length
        self.suspensions = 0
        self.resumes = 0
        self.last_suspended_for: float | None = None
        self.resent_bytes = 0
        #: frames that named a channel we do not know (logged at 1, 10, 100, ... of them)
        self.unknown_frames = 0
        self.bytes_in = 0
        self.bytes_out = 0

    # --- public API ---------------------------------------------------------------------

    def open(self, service: str, metadata: Mapping[str, str] | None = None) -> Deferred[Channel]:
        """Open a channel to ``service`` on the peer.

        Fires with the Channel once the peer accepted; fails with a ChannelOpenFailed
        subclass (UnknownService, ServiceUnavailable, ...) if it refused, or SessionClosed
        (at once unless ``is_open``: a suspended or resuming session opens nothing).
        Cancelling the Deferred abandons the open and resets the channel.
        """
        if self._closed_reason is not None or not self._connected:
            return fail(SessionClosed(self._closed_reason or "not connected"))
        if self._resuming:
            # Our OPEN could not go out before RESUMED (nothing but session frames may), and
            # opens do not survive a suspension: it would wait forever, holding its loan.
            return fail(SessionClosed("the session is resuming after a lost link"))
        if self._channels_in_use() >= self._max_channels:
            return fail(TooManyChannels(f"{self._max_channels} channels already open"))
        cid = self._next_id
        if cid > MAX_CHANNEL_ID:
            return fail(TooManyChannels("channel ids exhausted; open a new session"))
        self._next_id += 2
        loan = self._lend_first_window()
        request = Open(cid, service, self._window + loan, tuple((metadata or {}).items()))
        try:
            frame = encode(request)
        except FrameError as e:
            self._return_window(loan)
            return fail(ChannelOpenFailed(f"cannot open {service!r}: {e}"))

        def cancel(d: Deferred[Channel]) -> None:
            self._forget_open(cid)
            if self.opening.pop(cid, None) is not None:
                self._send_reset(cid, Reason.ABORTED, "open cancelled")
                self._remember_closed(cid)

        d: Deferred[Channel] = Deferred(cancel)
        self.opening[cid] = d
        self._open_requests[cid] = (service, request.metadata, loan)
        self._write(frame)
        return d

    def close(self, reason: str = "closed", code: int = Reason.NORMAL) -> None:
        """End the session: tell the peer why, then drop the connection."""
        if self._closed_reason is None and not self._connected and self._suspended_at is not None:
            self._log.info(
                "{label}: suspended session ended ({reason}): {n} channels reset",
                label=self.label,
                reason=reason,
                n=len(self.channels),
            )
            self._end(reason)
            return
        if self._closed_reason is None and self._connected:
            self._write_session(encode(GoAway(code, reason)))
            self._shutdown(reason)
            if self.transport is not None:
                self.transport.loseConnection()

    def when_closed(self) -> Deferred[str]:
        """A new Deferred that fires (on a later turn) with the reason once the session ended."""
        return self._ended.when_fired()

    @property
    def is_open(self) -> bool:
        """Open and usable: on a link, not suspended, not in the middle of resuming."""
        return self._connected and self._closed_reason is None and self._suspended_at is None

    @property
    def resumable(self) -> bool:
        """Both ends agreed to resume this session if its link is lost."""
        return self._secrets is not None

    @property
    def suspended_since(self) -> float | None:
        """When the link was lost (clock seconds), while the session waits for a new one."""
        return self._suspended_at if self._closed_reason is None else None

    @property
    def closed_reason(self) -> str | None:
        return self._closed_reason

    def resume_identity(self) -> tuple[ResumeSecrets | None, object | None]:
        """The session's secrets and its client's key (what a RESUME is checked against)."""
        return self._secrets, self._peer_key

    # --- Protocol -------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._connected = True
        self._paused = False
        assert self.transport is not None
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        if self._closed_reason is not None:
            self.transport.loseConnection()
        elif self._suspended_at is None:
            self._start_fresh()
        elif self._initiator:
            self._send_resume()

    def dataReceived(self, data: bytes) -> None:
        if self._handed_to is not None:
            self._handed_to.dataReceived(data)
            return
        if self._closed_reason is not None:
            return
        self.bytes_in += len(data)
        try:
            frames = self._decoder.feed(data)
        except FrameError as e:
            self._protocol_error(str(e))
            return
        for frame in frames:
            if self._handed_to is not None:
                # A RESUME handed the link to the session it names; it takes what follows.
                self._handed_to._dispatch(frame)
                continue
            if self._closed_reason is not None:
                return
            try:
                self._dispatch(frame)
            except Exception:
                # A bug in a protocol above must not take the session down with a traceback
                # into the reactor; it takes down only the channel concerned.
                self._log.failure("error handling {frame!r}", frame=type(frame).__name__)
                ch = self.channels.get(frame.channel)
                if ch is not None:
                    ch.reset(Reason.INTERNAL_ERROR, "internal error")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        why = self._closed_reason or _describe(reason)
        if self._secrets is not None and self._closed_reason is None:
            self._suspend(why)
            return
        self._end(why)

    # --- IPushProducer: the transport below is full / has room again ------------------------

    def pauseProducing(self) -> None:
        if not self._paused:
            self._paused = True
            for ch in list(self.channels.values()):
                ch._pause_producer("session")

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            for ch in list(self.channels.values()):
                ch._resume_producer("session")

    def stopProducing(self) -> None:
        pass

    # --- frames in ---------------------------------------------------------------------------

    def _dispatch(self, frame: Frame) -> None:
        cid = frame.channel
        if self._resuming and not isinstance(frame, Resumed | GoAway):
            self._protocol_error(f"{type(frame).__name__.upper()} before RESUMED")
            return
        if isinstance(frame, (Data, Window, Close)) and cid in self._accepting:
            # The peer learns of the channel from our OPEN_OK, so it cannot speak on it before.
            kind = type(frame).__name__.upper()
            self._abandon_accept(cid, f"{kind} before OPEN_OK")
            self._send_reset(cid, Reason.PROTOCOL_ERROR, f"{kind} before OPEN_OK")
            self._count_unknown(frame, "before OPEN_OK")
            return
        if isinstance(frame, Data):
            ch = self.channels.get(cid)
            if ch is not None:
                ch._on_data(frame.payload)
            elif cid in self._draining:
                self._drained(cid, len(frame.payload), False)
            else:
                self._unknown(frame)
        elif isinstance(frame, Window):
            ch = self.channels.get(cid)
            if ch is not None:
                ch._on_window(frame.increment)
            elif cid not in self._draining and cid not in self._finishing:
                self._unknown(frame)
        elif isinstance(frame, Ack):
            self._on_ack(frame)
        elif isinstance(frame, Close):
            ch = self.channels.get(cid)
            if ch is not None:
                ch._on_close()
            elif cid in self._draining:
                self._drained(cid, 0, True)
                del self._draining[cid]
                self._remember_closed(cid)
            else:
                self._unknown(frame)
        elif isinstance(frame, Reset):
            self._on_reset(frame)
        elif isinstance(frame, Open):
            self._on_open(frame)
        elif isinstance(frame, OpenOk):
            self._on_open_ok(frame)
        elif isinstance(frame, Hello):
            self._on_hello(frame)
        elif isinstance(frame, Resume):
            self._on_resume(frame)
        elif isinstance(frame, Resumed):
            self._on_resumed(frame)
        elif isinstance(frame, OpenFail):
            d = self.opening.pop(cid, None)
            self._forget_open(cid)
            if d is None:
                self._unknown(frame)
            else:
                self._remember_closed(cid)
                d.errback(open_failure(frame.code, frame.text))
        else:
            self._log.info(
                "{label}: peer ended the session: {text}", label=self.label, text=frame.text
            )
            self._shutdown(f"peer said: {frame.text}")
            if self.transport is not None:
                self.transport.loseConnection()

    def _on_open(self, frame: Open) -> None:
        cid = frame.channel
        if cid == 0 or (cid % 2 == 1) == self._initiator:
            self._protocol_error(f"OPEN with channel id {cid} of the wrong parity")
            return
        if cid in self.channels or cid in self._accepting or cid in self._draining:
            self._protocol_error(f"OPEN for channel {cid}, which is in use")
            return
        if self._channels_in_use() >= self._max_channels:
            self._refuse(
                cid,
                Reason.TOO_MANY_CHANNELS,
                f"channel limit reached: {self._max_channels} channels per session",
            )
            return
        if len(self._accepting) >= self._max_pending_accepts:
            self._refuse(
                cid,
                Reason.TOO_MANY_CHANNELS,
                f"pending-open limit reached: {self._max_pending_accepts} opens in progress "
                "per session",
            )
            return
        if self._acceptor is None:
            self._refuse(cid, Reason.REFUSED, "this side accepts no channels")
            return
        request = OpenRequest(frame.service, dict(frame.metadata), cid)
        try:
            endpoint = self._acceptor(request)
        except ChannelOpenFailed as e:
            self._refuse(cid, e.code, e.reason)
            return
        channel = Channel(
            self, cid, frame.service, frame.metadata, self._window, frame.window, ready=False
        )
        self._connect(channel, endpoint)

    def _connect(self, channel: Channel, endpoint: IStreamClientEndpoint) -> None:
        from ._forwarding import SpliceFactory

        cid = channel.id
        d = endpoint.connect(SpliceFactory(channel))
        self._accepting[cid] = (d, channel)

        def connected(_: object) -> None:
            if self._accepting.pop(cid, None) is None:
                return
            if channel.lost:
                return  # the service reset the connection at once; the peer got a RESET
            if self._closed_reason is not None:
                channel._on_session_lost(self._closed_reason)
                return
            self._add(channel)
            channel._widen(self._lend_first_window())
            self._write(encode(OpenOk(cid, channel.window)))
            channel._set_ready()

        def failed(f: Failure) -> None:
            if self._accepting.pop(cid, None) is None:
                return
            self._log.info(
                "{label}: cannot connect channel {cid} to {service!r}: {why}",
                label=self.label,
                cid=cid,
                service=channel.service,
                why=f.getErrorMessage(),
            )
            self._refuse(
                cid,
                Reason.CONNECT_FAILED,
                f"could not connect to service {channel.service!r}: {f.getErrorMessage()}",
            )

        d.addCallbacks(connected, failed)

    def _on_open_ok(self, frame: OpenOk) -> None:
        cid = frame.channel
        d = self.opening.pop(cid, None)
        if d is None:
            self._unknown(frame)
            return
        service, metadata, loan = self._open_requests.pop(cid)
        channel = Channel(self, cid, service, metadata, self._window, frame.window)
        channel._widen(loan)
        self._add(channel)
        d.callback(channel)

    def _add(self, channel: Channel) -> None:
        """Put an open channel in the table, paused like the others if the session is."""
        self.channels[channel.id] = channel
        if self._paused:
            channel._pause_producer("session")

    def _on_reset(self, frame: Reset) -> None:
        cid = frame.channel
        self._finishing.pop(cid, None)
        ch = self.channels.pop(cid, None)
        if ch is not None:
            self._remember_closed(cid)
            ch._on_reset(frame.code, frame.text)
            return
        if self._abandon_accept(cid, f"peer reset: {frame.text}"):
            self._remember_closed(cid)
            return
        opening = self.opening.pop(cid, None)
        self._forget_open(cid)
        if opening is not None:
            self._remember_closed(cid)
            opening.errback(open_failure(frame.code, frame.text))
            return
        self._draining.pop(cid, None)
        # Never answer a RESET with a RESET: that could ping-pong forever.

    def _unknown(self, frame: Frame) -> None:
        cid = frame.channel
        if cid in self._recently_closed:
            return  # in flight when we closed it: normal, not an error
        self._count_unknown(frame, "for an unknown channel")
        self._send_reset(cid, Reason.PROTOCOL_ERROR, f"unknown channel {cid}")
        self._remember_closed(cid)

    def _count_unknown(self, frame: Frame, what: str) -> None:
        """Log a frame the channel table has no place for, at 1, 10, 100, ... of them.

        A peer can send such frames as fast as it can write; one warning each would let it
        fill the disk with log (4 MiB of frames made 51 MB of log), so they are counted, and
        each power of ten is logged with the count so far.
        """
        self.unknown_frames += 1
        n = self.unknown_frames
        if n == 10 ** (len(str(n)) - 1):
            self._log.warn(
                "{label}: {kind} {what} {cid}; reset it ({count} such frames in this session)",
                label=self.label,
                kind=type(frame).__name__.upper(),
                what=what,
                cid=frame.channel,
                count=n,
            )

    def _abandon_accept(self, cid: int, why: str) -> bool:
        """Give up the pending accept of channel CID, if there is one.

        Its connect is cancelled; the channel is marked lost first, so a connection made
        anyway (by an endpoint that cannot cancel) is aborted as soon as it joins.
        """
        pending = self._accepting.pop(cid, None)
        if pending is None:
            return False
        d, channel = pending
        channel._on_reset(Reason.ABORTED, why)
        d.cancel()
        return True

    def _channels_in_use(self) -> int:
        return len(self.channels) + len(self.opening) + len(self._accepting)

    def _refuse(self, cid: int, code: int, reason: str) -> None:
        self._write(encode(OpenFail(cid, code, reason)))
        self._remember_closed(cid)

    def _protocol_error(self, reason: str) -> None:
        self._log.warn(
            "{label}: protocol violation, closing the session: {reason}",
            label=self.label,
            reason=reason,
        )
        self.close(f"protocol violation: {reason}", Reason.PROTOCOL_ERROR)

    # --- frames out (called by channels) --------------------------------------------------

    def _write(self, data: bytes) -> None:
        # While the client waits for RESUMED nothing but session frames may go out; what
        # channels say meanwhile is lost as with the link, and the resume makes up for it.
        if self.transport is not None and self._closed_reason is None and not self._resuming:
            self.bytes_out += len(data)
            self.transport.write(data)

    def _write_session(self, data: bytes) -> None:
        if self.transport is not None and self._closed_reason is None:
            self.bytes_out += len(data)
            self.transport.write(data)

    def _send_data(self, cid: int, data: bytes) -> None:
        if self.transport is None or self._closed_reason is not None or self._resuming:
            return
        n = len(data)
        self.bytes_out += n
        if n <= MAX_PAYLOAD:
            self.transport.writeSequence([data_header(cid, n), data])
            return
        view = memoryview(data)
        for start in range(0, n, MAX_PAYLOAD):
            chunk = bytes(view[start : start + MAX_PAYLOAD])
            self.transport.writeSequence([data_header(cid, len(chunk)), chunk])

    def _send_window(self, cid: int, increment: int) -> None:
        self._write(encode_window(cid, increment))

    def _send_close(self, cid: int) -> None:
        self._write(encode(Close(cid)))

    def _send_reset(self, cid: int, code: int, reason: str) -> None:
        self._write(encode(Reset(cid, code, reason)))

    def _send_ack(self, cid: int, received: int, fin: bool) -> None:
        self._write(encode(Ack(cid, received, fin)))

    def _lend_window(self, wanted: int, keep: int = 0) -> int:
        """Up to ``wanted`` bytes of extra window from the session's budget, leaving ``keep``."""
        granted = max(0, min(wanted, self._window_budget - keep))
        self._window_budget -= granted
        return granted

    def _lend_first_window(self) -> int:
        """What a new channel's first window gets beyond ``window``: up to the start window,
        from the half of the budget not kept for growth."""
        return self._lend_window(self._start_loan, self._growth_reserve)

    def _forget_open(self, cid: int) -> None:
        """Our OPEN of CID is answered without a channel (or abandoned): its loan comes back."""
        request = self._open_requests.pop(cid, None)
        if request is not None:
            self._return_window(request[2])

    def _return_window(self, amount: int) -> None:
        self._window_budget += amount

    def _forget(self, cid: int, finished: bool = False) -> None:
        ch = self.channels.pop(cid, None)
        if finished and ch is not None and ch._owes_peer():
            self._keep_finishing(ch)
        self._remember_closed(cid)

    def _draining_channel(self, cid: int) -> None:
        """We closed both ways first: drop (and credit) the peer's data until its CLOSE."""
        ch = self.channels.pop(cid, None)
        if ch is not None:
            self._draining[cid] = ch.bytes_received
            while len(self._draining) > self._max_channels:
                self._draining.popitem(last=False)
            if ch._owes_peer():
                self._keep_finishing(ch)

    def _drained(self, cid: int, n: int, fin: bool) -> None:
        """N more bytes (or the CLOSE, if FIN) came on a channel we are draining: dropped,
        credited, and on a resumable session acknowledged, as a live channel does.

        Unacknowledged, the peer would keep every byte it sends us from now on (credit keeps
        coming) and its channel once closed, all for a resume that would discard them.
        """
        received = self._draining[cid] + n
        self._draining[cid] = received
        if n:
            self._send_window(cid, n)
        if self._secrets is not None:
            self._send_ack(cid, received, fin)

    def _keep_finishing(self, ch: Channel) -> None:
        """Keep a closed channel's unacknowledged bytes and CLOSE, to re-send on a resume."""
        self._finishing[ch.id] = ch
        while len(self._finishing) > self._max_channels:
            del self._finishing[next(iter(self._finishing))]

    def _remember_closed(self, cid: int) -> None:
        self._recently_closed[cid] = None
        self._recently_closed.move_to_end(cid)
        while len(self._recently_closed) > _RECENT:
            self._recently_closed.popitem(last=False)

    def _end(self, reason: str) -> None:
        """The session is over for good (not suspended): channels reset, waiters told."""
        self._shutdown(reason)
        self._connected = False
        self._ended.fire(reason)

    def _shutdown(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        self._stop_grace()
        self._finishing.clear()
        if self._registry is not None and self._secrets is not None:
            self._registry.remove(self._secrets.session_id, self)
        channels, self.channels = self.channels, {}
        opening, self.opening = self.opening, {}
        self._open_requests.clear()
        accepting, self._accepting = self._accepting, {}
        for ch in channels.values():
            ch._on_session_lost(reason)
        for d in opening.values():
            d.errback(SessionClosed(reason))
        for connecting, channel in accepting.values():
            channel._on_session_lost(reason)
            connecting.cancel()
        if self.unknown_frames > 1:
            self._log.info(
                "{label}: {count} frames for unknown channels in this session",
                label=self.label,
                count=self.unknown_frames,
            )


def _describe(reason: Failure) -> str:
    if isinstance(reason.value, SessionClosed):
        return reason.value.reason
    return reason.getErrorMessage() or type(reason.value).__name__
