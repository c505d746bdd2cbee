"""One channel of a mux session: a transport for the protocol above it, with credit flow control.

A channel is to its protocol what a TCP connection is to a Twisted protocol: it provides
ITransport (with half-close) and is a push producer for whatever consumes its data. The
session feeds it frames; it never touches the session's transport itself.

Flow control, per direction:

* sending: we may have at most ``send credit`` bytes in flight. Bytes written beyond it wait
  in a queue, and the producer registered with us (say the local TCP connection) is paused
  until the peer's WINDOW frames bring credit again.
* receiving: the peer may send at most what we granted. We grant more only as our protocol
  consumes data; while it is paused (its own consumer is full) data waits here, at most
  ``window`` bytes of it, and no credit goes back. A peer that overruns gets a RESET.

The window starts at the session's ``start_window`` (4 MiB) while the session can lend it, and
at ``window`` (256 KiB) otherwise; it doubles, up to ``max_window``, each time the consumer has
taken a quarter of it (one grant) without pausing: a short transfer goes through in its first
window, and a bulk one is not throttled to one window per round trip (three event loops
away), while a channel whose consumer stalls never gets more than it has. A window is credit,
not a buffer: an idle channel holds no memory for it. What a stalled consumer could make us
buffer beyond ``window`` is lent by the session from a fixed budget and given back when the
channel ends, so many fast channels cannot pin unbounded memory if their consumers stall.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import TYPE_CHECKING, cast

import attrs
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHalfCloseableProtocol,
    IProducer,
    IProtocol,
    IPushProducer,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nbbridge.wire import Reason

from ._errors import ChannelReset, SessionClosed
from ._resume import ChannelPlan, ChannelPosition, Retransmit

if TYPE_CHECKING:
    from ._session import MuxSession


@implementer(IAddress)
@attrs.frozen
class ChannelAddress:
    """The address of a channel: which service, which channel id, on which session."""

    service: str
    channel: int
    session: str = ""


class Sending(Enum):
    """Our direction of a channel."""

    OPEN = "open"  #: bytes go out as the peer's credit allows
    CLOSING = "closing"  #: half-closed by us: CLOSE goes once the queued bytes are sent
    CLOSED = "closed"  #: our CLOSE is sent


class Receiving(Enum):
    """The peer's direction of a channel."""

    OPEN = "open"  #: the peer may send
    CLOSE_QUEUED = "close queued"  #: its CLOSE waits behind bytes our consumer has not taken
    CLOSED = "closed"  #: our protocol was told (readConnectionLost)


class Ending(Enum):
    """The channel as a whole."""

    LIVE = "live"
    CLOSING = "closing"  #: loseConnection: closing both ways; the peer's bytes are dropped
    LOST = "lost"  #: connectionLost was delivered: nothing more happens


# Module-level names for the members: the data path tests them on every frame.
SEND_OPEN, SEND_CLOSING, SEND_CLOSED = Sending.OPEN, Sending.CLOSING, Sending.CLOSED
RECV_OPEN, RECV_CLOSE_QUEUED, RECV_CLOSED = (
    Receiving.OPEN,
    Receiving.CLOSE_QUEUED,
    Receiving.CLOSED,
)
LIVE, CLOSING, LOST = Ending.LIVE, Ending.CLOSING, Ending.LOST

#: What a channel's producer is paused for when it is not paused: the empty frozenset is one
#: shared object, so a channel that never pauses its producer holds no set of its own.
_NOT_PAUSED: frozenset[str] = frozenset()


@implementer(ITransport, IConsumer, IPushProducer)
class Channel:
    """A bidirectional byte stream inside a MuxSession.

    A server may hold thousands of idle channels, so a channel has ``__slots__`` (no
    instance dict) and allocates its queues only while something waits in them: an empty
    deque costs some 760 bytes.

    Its life is three small state machines, each only moving forward: ``_sending``
    (:class:`Sending`), ``_receiving`` (:class:`Receiving`) and ``_ending`` (:class:`Ending`).
    The channel is done once both directions are closed, or when it is lost. ``_ready``
    (our OPEN_OK is out) and ``_paused`` (our consumer is full) are flow switches, not stages.
    """

    __slots__ = (
        "_ending",
        "_fin_acked",
        "_grant_threshold",
        "_grown",
        "_paused",
        "_producer",
        "_producer_paused_for",
        "_protocol",
        "_ready",
        "_receiving",
        "_recv_allowed",
        "_recv_queue",
        "_recv_queued",
        "_retx",
        "_send_credit",
        "_send_queue",
        "_sending",
        "_session",
        "_since_growth",
        "_streaming",
        "_unacked",
        "_window",
        "bytes_received",
        "bytes_sent",
        "disconnecting",
        "id",
        "metadata",
        "service",
    )

    _log = Logger()

    def __init__(
        self,
        session: MuxSession,
        channel_id: int,
        service: str,
        metadata: tuple[tuple[str, str], ...],
        window: int,
        send_credit: int,
        *,
        ready: bool = True,
    ) -> None:
        self.id = channel_id
        self.service = service
        self.metadata = dict(metadata)
        self.disconnecting = False
        self._session = session
        self._window = window
        self._grant_threshold = max(1, window // 4)
        self._grown = 0  # bytes of window beyond the initial one, lent by the session
        self._since_growth = 0  # bytes consumed without a pause since the window last grew
        self._protocol: IProtocol | None = None
        # Sending (an accepted channel is not ready until our OPEN_OK has gone out).
        self._ready = ready
        self._send_credit = send_credit
        self._send_queue: deque[bytes] | None = None  # bytes waiting for credit
        self._producer: IProducer | None = None
        self._streaming = False
        self._producer_paused_for = _NOT_PAUSED
        self._sending = SEND_OPEN
        # Receiving.
        self._recv_allowed = window
        self._unacked = 0
        self._recv_queue: deque[bytes] | None = None  # bytes waiting for our consumer
        self._recv_queued = 0
        self._paused = False
        self._receiving = RECV_OPEN
        # Ending.
        self._ending = LIVE
        # Resumption: bytes sent and not yet acknowledged (None: the session cannot resume).
        self._retx: Retransmit | None = Retransmit() if session.resumable else None
        self._fin_acked = False
        self.bytes_sent = 0
        self.bytes_received = 0

    def __repr__(self) -> str:
        return f"<Channel {self.id} {self.service!r}>"

    # --- what the protocol above sees (ITransport) --------------------------------------

    def attach(self, protocol: IProtocol) -> None:
        """Connect ``protocol`` to this channel; data that arrived before is delivered now."""
        self._protocol = protocol
        protocol.makeConnection(self)
        self._deliver_queued()

    def write(self, data: bytes) -> None:
        """Send ``data``; what exceeds the peer's credit waits and pauses our producer."""
        if self._sending is not SEND_OPEN or self._ending is LOST or not data:
            return
        self.bytes_sent += len(data)
        if not self._send_queue and len(data) <= self._send_credit and self._ready:
            self._send_credit -= len(data)
            if self._retx is not None:
                self._retx.append(bytes(data))
            self._session._send_data(self.id, data)
            return
        if self._send_queue is None:
            self._send_queue = deque()
        self._send_queue.append(bytes(data))
        self._flush()

    def writeSequence(self, data: list[bytes]) -> None:  # type: ignore[override]
        self.write(b"".join(data))

    def loseWriteConnection(self) -> None:
        """Half-close: send CLOSE once everything written so far has been sent."""
        if self._sending is not SEND_OPEN or self._ending is LOST:
            return
        self._sending = SEND_CLOSING
        self._flush()

    def loseConnection(self) -> None:
        """Close both ways, after sending what is queued, like TCP's close."""
        if self._ending is not LIVE:
            return
        self._ending = CLOSING
        self.disconnecting = True
        self.loseWriteConnection()

    def abortConnection(self) -> None:
        """Drop whatever is queued and RESET the channel."""
        self.reset(Reason.ABORTED, "aborted", ConnectionAborted())

    def reset(self, code: int, reason: str, error: BaseException | None = None) -> None:
        """Abort the channel with a reason the peer will see."""
        if self._ending is LOST:
            return
        self._session._send_reset(self.id, code, reason)
        self._lose(Failure(error or ChannelReset(code, reason)))
        self._session._forget(self.id)

    def getPeer(self) -> ChannelAddress:
        return ChannelAddress(self.service, self.id, self._session.label)

    def getHost(self) -> ChannelAddress:
        return ChannelAddress(self.service, self.id, self._session.label)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError(f"{self!r} already has a producer")
        self._producer = producer
        self._streaming = streaming
        if streaming:
            if self._producer_paused_for:
                cast(IPushProducer, producer).pauseProducing()
        elif not self._send_queue:
            producer.resumeProducing()  # type: ignore[attr-defined]

    def unregisterProducer(self) -> None:
        self._producer = None
        self._producer_paused_for = _NOT_PAUSED

    # --- what the consumer of our data calls (IPushProducer) ------------------------------

    def pauseProducing(self) -> None:
        """Our consumer is full: keep data here and grant no more credit."""
        self._paused = True
        self._since_growth = 0

    def resumeProducing(self) -> None:
        self._paused = False
        self._deliver_queued()

    def stopProducing(self) -> None:
        """Our consumer went away: what the peer still sends can no longer be delivered.

        That is a loss, so the channel is reset, never closed: a TCP connection calls this
        as it dies, reset or not, before telling its protocol how it ended; a CLOSE here
        would pass a reset off as an orderly end. Once the peer has finished sending, nothing
        is lost, and the protocol above decides how the channel ends.
        """
        if self._ending is LOST or self._receiving is RECV_CLOSED:
            return
        self.abortConnection()

    # --- what the session calls -------------------------------------------------------------

    def _on_data(self, payload: bytes) -> None:
        n = len(payload)
        if self._receiving is not RECV_OPEN:
            self._violation(Reason.PROTOCOL_ERROR, "DATA after CLOSE")
            return
        if n > self._recv_allowed:
            self._violation(
                Reason.WINDOW_EXCEEDED,
                f"peer sent {n} bytes with only {self._recv_allowed} bytes of credit",
            )
            return
        self._recv_allowed -= n
        self.bytes_received += n
        if self._ending is CLOSING:
            # We closed; like a closed socket, we drop what still comes, but keep crediting
            # it so the peer can flush and see our CLOSE.
            self._consumed(n)
        elif self._protocol is None or self._paused or self._recv_queue:
            if self._recv_queue is None:
                self._recv_queue = deque()
            self._recv_queue.append(payload)
            self._recv_queued += n
        else:
            self._protocol.dataReceived(payload)
            self._consumed(n)

    def _on_window(self, increment: int) -> None:
        if self._send_credit + increment > 0xFFFFFFFF:
            self._violation(Reason.PROTOCOL_ERROR, "WINDOW overflows the credit")
            return
        self._send_credit += increment
        self._flush()

    def _on_close(self) -> None:
        if self._receiving is not RECV_OPEN:
            self._violation(Reason.PROTOCOL_ERROR, "second CLOSE")
            return
        self._receiving = RECV_CLOSE_QUEUED
        if self._retx is not None:
            # The sender keeps our channel's last bytes and its CLOSE until we say we hold them.
            self._session._send_ack(self.id, self.bytes_received, True)
        self._deliver_queued()

    def _on_reset(self, code: int, reason: str) -> None:
        self._lose(Failure(ChannelReset(code, reason)))

    def _on_session_lost(self, reason: str) -> None:
        self._lose(Failure(SessionClosed(reason)))

    def _pause_producer(self, why: str) -> None:
        was_paused = bool(self._producer_paused_for)
        self._producer_paused_for |= {why}
        if not was_paused and self._producer is not None and self._streaming:
            cast(IPushProducer, self._producer).pauseProducing()

    def _resume_producer(self, why: str) -> None:
        if why not in self._producer_paused_for:
            return
        self._producer_paused_for -= {why}
        if not self._producer_paused_for and self._producer is not None and self._streaming:
            cast(IPushProducer, self._producer).resumeProducing()

    # --- inside --------------------------------------------------------------------------------

    def _set_ready(self) -> None:
        self._ready = True
        self._flush()
        self._deliver_queued()

    def _flush(self) -> None:
        """Send what credit allows; then CLOSE if asked and all is sent; steer the producer."""
        if not self._ready:
            if self._send_queue:
                self._pause_producer("credit")
            return
        queue = self._send_queue
        while queue and self._send_credit > 0 and self._ending is not LOST:
            chunk = queue[0]
            if len(chunk) <= self._send_credit:
                queue.popleft()
            else:
                queue[0] = chunk[self._send_credit :]
                chunk = chunk[: self._send_credit]
            self._send_credit -= len(chunk)
            if self._retx is not None:
                self._retx.append(chunk)
            self._session._send_data(self.id, chunk)
        if self._ending is LOST:
            return
        if queue:
            self._pause_producer("credit")
            return
        self._send_queue = None
        self._resume_producer("credit")
        if self._sending is SEND_CLOSING:
            self._sending = SEND_CLOSED
            self._session._send_close(self.id)
            half = IHalfCloseableProtocol(self._protocol, None)
            if half is not None and self._ending is LIVE:
                half.writeConnectionLost()
            self._maybe_finish()
        elif self._producer is not None and not self._streaming and self._sending is SEND_OPEN:
            self._producer.resumeProducing()  # type: ignore[attr-defined]

    def _deliver_queued(self) -> None:
        queue = self._recv_queue
        while queue and not self._paused and self._protocol is not None:
            chunk = queue.popleft()
            self._recv_queued -= len(chunk)
            self._protocol.dataReceived(chunk)
            self._consumed(len(chunk))
            if self._ending is LOST:
                return
        if queue is not None and not queue and queue is self._recv_queue:
            self._recv_queue = None
        if (
            self._receiving is RECV_CLOSE_QUEUED
            and not self._recv_queue
            and self._protocol is not None
        ):
            self._receiving = RECV_CLOSED
            half = IHalfCloseableProtocol(self._protocol, None)
            if half is not None and self._ending is LIVE:
                half.readConnectionLost()
            else:
                # A protocol without half-close sees the peer's CLOSE as the end, as with TCP.
                self.loseConnection()
            self._maybe_finish()

    def _consumed(self, n: int) -> None:
        self._unacked += n
        self._since_growth += n
        if self._unacked >= self._grant_threshold and self._ending is not LOST:
            increment = self._unacked + self._grow()
            self._recv_allowed += increment
            self._session._send_window(self.id, increment)
            if self._retx is not None:
                self._session._send_ack(self.id, self.bytes_received, False)
            self._unacked = 0

    def _widen(self, extra: int) -> None:
        """Add EXTRA (lent by the session) to a window no data has used yet: the first one.

        The grant threshold stays that of the window without the loan: grants (and with
        them the ACKs that let a resumable sender drop what it keeps for a resume) come as
        often as before, so an idle channel after a short transfer does not leave its peer
        holding up to a quarter of a big window; it rises as the consumer proves fast.
        """
        self._window += extra
        self._grown += extra
        self._recv_allowed += extra

    @property
    def window(self) -> int:
        """Our receive window: the most the peer may have in flight to us."""
        return self._window

    def _grow(self) -> int:
        """Extra window to grant, once a grant's worth went through without a pause; the
        grant threshold doubles too, up to a quarter of the window.

        At each grant, not once per whole window: growing once per window took a 10 MB
        download some 4 MB to reach the largest window, and its sender spent a quarter of
        the transfer waiting for credit (bench/jupyter_transfer.py).
        """
        if self._since_growth < self._grant_threshold or self._paused or self._recv_queue:
            return 0
        self._since_growth = 0
        extra = self._session._lend_window(
            min(self._window, self._session.max_window - self._window)
        )
        self._window += extra
        self._grown += extra
        self._grant_threshold = min(max(1, self._window // 4), 2 * self._grant_threshold)
        return extra

    def _maybe_finish(self) -> None:
        """Both directions closed: the channel is done."""
        if self._ending is LOST:
            return
        if self._sending is SEND_CLOSED and (
            self._receiving is RECV_CLOSED or self._ending is CLOSING
        ):
            if self._receiving is RECV_CLOSED:
                self._session._forget(self.id, finished=True)
            else:
                # We closed both ways first: stay in the table, dropping data, until the
                # peer's CLOSE comes; the protocol is told now, as TCP would.
                self._session._draining_channel(self.id)
            self._lose(Failure(ConnectionDone()))

    def _violation(self, code: int, reason: str) -> None:
        self._log.warn(
            "channel {cid} ({service}) reset: {reason}",
            cid=self.id,
            service=self.service,
            reason=reason,
        )
        self.reset(code, reason)

    def _lose(self, reason: Failure) -> None:
        if self._ending is LOST:
            return
        self._ending = LOST
        self._session._return_window(self._grown)
        self._grown = 0
        self.disconnecting = True
        self._recv_queue = None
        self._recv_queued = 0
        self._send_queue = None
        self._producer = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.connectionLost(reason)

    # --- resumption (docs/resume.md) -----------------------------------------------------------

    def _on_ack(self, received: int, fin: bool) -> bool:
        """The peer holds RECEIVED bytes (and our CLOSE if FIN); True once it holds it all."""
        retx = self._retx
        if retx is None:
            return False
        retx.ack(received)
        if fin and self._sending is SEND_CLOSED:
            self._fin_acked = True
        return self._fin_acked and not retx

    def _owes_peer(self) -> bool:
        """Bytes or a CLOSE of ours the peer has not acknowledged (kept for a resume)."""
        retx = self._retx
        return retx is not None and (bool(retx) or not self._fin_acked)

    def _position(self, discarding: bool = False) -> ChannelPosition:
        retx = self._retx
        assert retx is not None
        return ChannelPosition(
            channel=self.id,
            received=self.bytes_received,
            limit=self.bytes_received + max(0, self._recv_allowed),
            fin_received=self._receiving is not RECV_OPEN,
            acked=retx.acked,
            sent=retx.sent,
            fin_sent=self._sending is SEND_CLOSED,
            discarding=discarding,
        )

    def _suspend(self) -> None:
        """The link is gone: send nothing, read nothing more from our producer."""
        self._send_credit = 0
        self._pause_producer("suspended")

    def _resume(self, plan: ChannelPlan) -> None:
        """Carry out PLAN (the session checked that it holds no reset)."""
        retx = self._retx
        assert retx is not None
        if plan.resend_from is not None:
            # What the peer holds is acknowledged; the rest goes again, and stays kept.
            retx.ack(plan.resend_from)
            for chunk in retx.since(plan.resend_from):
                self._session._send_data(self.id, chunk)
        else:
            retx.ack(retx.sent)
        if plan.resend_close:
            self._session._send_close(self.id)
        if plan.fin_acked:
            self._fin_acked = True
        if self._ending is LOST:
            return
        self._send_credit = plan.credit
        self._resume_producer("suspended")
        self._flush()

    @property
    def lost(self) -> bool:
        return self._ending is LOST

    @property
    def buffered(self) -> int:
        """Received bytes waiting for our consumer (never more than the window)."""
        return self._recv_queued
