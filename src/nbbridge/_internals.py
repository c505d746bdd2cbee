# Autobahn's protocol API is untyped; calling into it is the point of this module.
# mypy: disable-error-code="no-untyped-call"
"""Every use of Autobahn's and Twisted's private or undocumented attributes, in one place.

nbbridge reads its data frames itself and writes small frames without waiting for a reactor
turn (see `nbbridge.websocket` and `nbbridge.mux`); both need a few attributes that Autobahn
and Twisted do not document. Each is wrapped here with the reason, so an upgrade that renames
one breaks this module and its test (`tests/test_internals.py` asserts that each attribute
still exists), not the data path silently. Nothing else in nbbridge touches them.

It sits below the mux and the WebSocket layers (both use it), and imports neither.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.tcp import Connection, Port

if TYPE_CHECKING:
    # Twisted exports the trust-root interface only from its private TLS module.
    from twisted.internet._sslverify import IOpenSSLTrustRoot as IOpenSSLTrustRoot

#: Autobahn attributes this module reads or writes, by the class that defines them (checked
#: by the test against the installed Autobahn).
AUTOBAHN_PROTOCOL_ATTRIBUTES = (
    "_fail_connection",
    "_max_message_size_exceeded",
    "_cancelAutoPingTimeoutCall",
    "_sendAutoPing",
    "processControlFrame",
)
AUTOBAHN_FACTORY_ATTRIBUTES = ("_batched_timer",)
#: What `lazy_debug_formatting` replaces in ``autobahn.websocket.protocol``.
AUTOBAHN_MODULE_ATTRIBUTES = ("pformat",)
#: Twisted's HTTPChannel attribute `request_target` reads.
TWISTED_HTTP_CHANNEL_ATTRIBUTES = ("_path",)
#: Twisted's TCP connection attributes `write_now` reads.
TWISTED_CONNECTION_ATTRIBUTES = ("_writeDisconnected", "_tempDataBuffer", "dataBuffer", "offset")
#: Twisted's listening TCP port attribute `take_at_accept` wraps.
TWISTED_PORT_ATTRIBUTES = ("transport",)


# -- Autobahn -----------------------------------------------------------------------------------


#: txaio's log levels at which Autobahn's debug lines are emitted.
_DEBUG_LEVELS = frozenset({"debug", "trace"})
#: What a debug-only argument reads as when debug lines are not emitted (never seen).
NOT_FORMATTED = "(not formatted: debug logging is off)"


def lazy_debug_formatting() -> bool:
    """Let Autobahn pretty-print its debug-only log arguments only when they are logged.

    Autobahn's WebSocket protocol builds the argument of two debug lines eagerly: every new
    connection ``pprint.pformat``s its ~40 settings (``_connectionMade``), every client
    handshake its transport details (``startHandshake``), whether debug lines are emitted
    or not (txaio's level is "info" unless set). In a py-spy profile of the relay while
    links were being set up (bench/load.py's set-up rounds: two WebSocket handshakes per
    link), that formatting was 14 % of the relay's CPU, more than the handshake's parsing.
    ``pformat`` in Autobahn's protocol module becomes a function that formats only at a
    debug level. (Its only other use there is ``Timings.__str__``, which nbbridge never
    enables: at other levels it would read as `NOT_FORMATTED`.)

    Process-wide: called by twistd's entry point for the daemons. Returns whether Autobahn
    was changed (False if the module no longer has the name).
    """
    import txaio
    from autobahn.websocket import protocol as autobahn_protocol

    real = getattr(autobahn_protocol, "pformat", None)
    if real is None:
        return False
    if getattr(real, "lazy", False):
        return True

    def pformat_if_debug(obj: object, *args: Any, **kwargs: Any) -> str:
        # Looked up on each call: until txaio.use_twisted() has run (importing
        # autobahn.twisted does it), the name is txaio's placeholder, which raises.
        if txaio.get_global_log_level() in _DEBUG_LEVELS:  # type: ignore[attr-defined]
            return str(real(obj, *args, **kwargs))
        return NOT_FORMATTED

    pformat_if_debug.lazy = True  # type: ignore[attr-defined]
    patched: Any = autobahn_protocol  # mypy knows the name as pprint.pformat
    patched.pformat = pformat_if_debug
    return True


def log_time_once_a_second() -> bool:
    """Format the log's timestamp once a second, not once a line; whether it was installed.

    twistd's log file writes each line through ``textFileLogObserver``, whose time prefix is
    ``twisted.logger._file.formatTime``: a local time-zone offset worked out afresh from
    ``time.localtime`` and ``gmtime``, a ``datetime`` built and ``strftime``'d, for every line.
    In py-spy profiles of link set-up that was a quarter of all logging's cost (3 % of the
    relay's and the agent's CPU per link). The text of a format with whole seconds changes
    once a second, so the last one is kept; a format with sub-second fields (``%f``) is
    formatted every time. Process-wide, like `lazy_debug_formatting`.
    """
    from twisted.logger import _file

    real = getattr(_file, "formatTime", None)
    if real is None:
        return False
    if getattr(real, "once_a_second", False):
        return True
    last: list[Any] = [None, None, ""]  # second, format, text

    def format_time(when: float | None, timeFormat: str | None = None, default: str = "-") -> str:
        if when is None or timeFormat is None or "%f" in timeFormat:
            return str(real(when, timeFormat, default))
        second = int(when)
        if last[0] != second or last[1] != timeFormat:
            last[:] = [second, timeFormat, real(second, timeFormat, default)]
        return str(last[2])

    format_time.once_a_second = True  # type: ignore[attr-defined]
    patched: Any = _file
    patched.formatTime = format_time
    return True


def fail_connection(protocol: Any, code: int, reason: str) -> None:
    """Send a close frame with CODE and REASON and stop reading (RFC 6455 "fail").

    Autobahn's own ``_fail_connection``: ``sendClose`` refuses codes below 3000 (1002, 1009),
    which a protocol violation must be able to send.
    """
    protocol._fail_connection(code, reason)


def cancel_close_timer(protocol: Any) -> None:
    """Cancel the close-handshake timer: call once the TCP connection is gone.

    Autobahn leaves the timer running when the connection ends before the peer's close reply
    was read (after a 1007, say); nothing is left for it to do. (It is txaio's batched call:
    no ``active()``, but Autobahn sets it to None once fired.)
    """
    timer, protocol.closeHandshakeTimeoutCall = protocol.closeHandshakeTimeoutCall, None
    if timer is not None:
        timer.cancel()


def ping_again_later(protocol: Any) -> None:
    """Forget the ping whose pong is late and send the next one an interval from now.

    Autobahn only knows "pong late -> drop"; a splice end that is not read because its
    partner is full must get another chance, on the same batched timer Autobahn uses.
    """
    protocol.autoPingTimeoutCall = None
    protocol.autoPingPending = None
    protocol.autoPingPendingCall = protocol.factory._batched_timer.call_later(
        protocol.autoPingInterval, protocol._sendAutoPing
    )


def traffic_seen(protocol: Any) -> None:
    """Any traffic shows the peer is alive, as Autobahn itself counts it on its own read path."""
    if protocol.autoPingTimeoutCall is not None and protocol.autoPingRestartOnAnyTraffic:
        protocol._cancelAutoPingTimeoutCall()


def auto_ping_pending(protocol: Any) -> bool:
    """Whether Autobahn's own heartbeat ping is waiting for its pong.

    A pong for a ping of ours that arrives then does not match Autobahn's payload, and Autobahn
    logs it as unexpected; whoever measures the round-trip time skips that turn instead.
    """
    return protocol.autoPingPending is not None


def take_handshake_leftover(protocol: Any) -> bytes:
    """What arrived with the opening handshake, unread by Autobahn (its ``data`` buffer)."""
    data: bytes = protocol.data
    protocol.data = b""
    return data


def process_control_frame(protocol: Any, opcode: int, payload: bytes) -> None:
    """Hand a control frame nbbridge read itself to Autobahn's own handling (close, ping, pong).

    Autobahn reads the frame it handles from ``current_frame`` and ``control_frame_data``.
    """
    from autobahn.websocket.protocol import FrameHeader

    protocol.current_frame = FrameHeader(opcode, True, 0, len(payload), None)  # type: ignore[arg-type]
    protocol.control_frame_data = [payload]
    try:
        protocol.processControlFrame()
    finally:
        protocol.current_frame = None


def autobahn_has_queued(protocol: Any) -> bool:
    """Whether Autobahn holds frames of its own that were not written yet (its send queue)."""
    return bool(protocol.send_queue)


class SizeLimitHook:
    """Mixin: Autobahn's size-limit callback, renamed to a method of ours.

    Autobahn calls ``_max_message_size_exceeded`` when a message passes its limit and would
    close with 1009; nbbridge closes with its own code and reason (`message_over_limit`).
    """

    def _max_message_size_exceeded(self, msg_size: int, max_msg_size: int, reason: str) -> None:
        self.message_over_limit(msg_size, max_msg_size)

    def message_over_limit(self, size: int, limit: int) -> None:
        """A message of SIZE bytes or more passed LIMIT."""
        raise NotImplementedError


# -- Twisted ------------------------------------------------------------------------------------


#: Errors of ``send`` after which the socket is fine: Twisted queues the data and retries.
_TRY_LATER = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR})


def write_now(transport: Any, data: bytes, tail: bytes = b"") -> bool:
    """``transport.write(data + tail)``, but sent at once when nothing is queued before it.

    Returns whether the socket took it all at once (nothing was left queued behind).

    With TAIL, the two go out in one ``sendmsg`` (a gather write): a frame header and the
    payload it heads are sent without first copying the payload behind the header.

    Twisted only queues a write and sends it on the next reactor turn, once epoll says the
    socket is writable: two more epoll calls and a turn per message on every hop, which is
    most of the round-trip time of a small request through three processes. When the
    transport's buffer is empty, sending now keeps the byte order and changes nothing else;
    whatever the socket does not take is queued by ``transport.write`` as usual, and with it
    the producer pause and the error handling. Only plain TCP connections qualify (not one
    that started TLS, whose bytes must go through the TLS layer). Whether the buffer is empty
    is only in Twisted's private write-buffer fields.
    """
    if (
        isinstance(transport, Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataBuffer
        and len(transport.dataBuffer) == transport.offset
    ):
        try:
            sent = transport.socket.sendmsg((data, tail)) if tail else transport.socket.send(data)
        except OSError as e:
            if e.errno not in _TRY_LATER:
                # The kernel reports a reset (ECONNRESET, EPIPE) once, to whichever call
                # meets it first; after that a read returns b"", which Twisted takes for a
                # clean EOF. So the error must not be swallowed here: the connection is
                # aborted, and its protocol learns that it ended in error (issue 16).
                transport.abortConnection()
                return False
            sent = 0
        if sent == len(data) + len(tail):
            return True
        if sent >= len(data):
            data, tail = tail[sent - len(data) :], b""
        else:
            data = data[sent:]
    transport.write(data)
    if tail:
        transport.write(tail)
    return False


#: What `check_eof` found: a real end of stream, a reset, or no end at all (read on).
EOF, RESET, NOT_ENDED = "eof", "reset", "not ended"


def check_eof(transport: Any) -> str:
    """Whether the EOF Twisted just reported on ``transport`` is one: `EOF`, `RESET` or `NOT_ENDED`.

    Twisted's epoll reactor takes a hang-up event without "readable" on a descriptor it reads
    for a clean EOF. The event may be stale: taken while the descriptor was registered for
    writing only (its reading paused), and reading resumed by an earlier event of the same
    batch. A connection reset then reads as a clean EOF, and the bytes still queued in the
    socket are dropped (issue 16). Peeking at the socket settles it: an error is a reset
    (`RESET`), bytes or nothing yet mean the stream goes on (`NOT_ENDED`: read again), and
    only b"" is an end of stream. Connections this cannot peek at (TLS, not a socket) are
    taken at Twisted's word.
    """
    if not isinstance(transport, Connection) or transport.TLS or transport.disconnected:
        return EOF
    try:
        peeked = transport.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError as e:
        return NOT_ENDED if e.errno in _TRY_LATER else RESET
    return NOT_ENDED if peeked else EOF


def add_trust_root_to_context(root: IOpenSSLTrustRoot, context: Any) -> None:
    """Load ROOT's CAs into a pyOpenSSL ``SSL.Context``, as Twisted does for a connection.

    ``_addCACertsToContext`` is the one method of Twisted's ``IOpenSSLTrustRoot`` (exported
    only from its private TLS module); ``nbbridge.transport`` calls it to find out whether the
    platform's store holds any CA at all (it holds none with the cryptography wheels on a
    stock Mac), so that it can fall back to certifi's bundle.
    """
    root._addCACertsToContext(context)


#: Twisted's write-buffer fields `queued_bytes` reads (FileDescriptor).
TWISTED_BUFFER_ATTRIBUTES = ("dataBuffer", "offset", "_tempDataLen")


def queued_bytes(transport: Any) -> int | None:
    """How many bytes TRANSPORT holds that the kernel has not taken yet, or None if unknown.

    The reverse proxy (`nbbridge.web`) reports the most it ever held, so that a test can see
    that a large body streamed with backpressure instead of piling up in memory. Twisted keeps
    the count only in its private write-buffer fields; wrappers (a `ProtocolWrapper`, the
    request-body consumer of twisted.web's client, which keeps its transport as ``_transport``)
    are looked through; TLS and other transports answer None.
    """
    seen = 0
    while not isinstance(transport, Connection):
        inner = getattr(transport, "transport", None) or getattr(transport, "_transport", None)
        if inner is None or inner is transport or seen > 4:
            return None
        transport, seen = inner, seen + 1
    if transport.TLS:
        return None
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def take_over_connection(request: Any, protocol: Any) -> Any:
    """Hand the connection under a twisted.web REQUEST to PROTOCOL; returns the transport.

    After a WebSocket upgrade the connection is no longer HTTP. Twisted has no public way to
    do this (its own ``HTTPChannel._protocolUpgradeForWebsockets`` is private and recent);
    this is what Autobahn's ``WebSocketResource`` does: the channel forgets its transport,
    the transport (or the `ProtocolWrapper` around it, e.g. a connection tracker) delivers to
    PROTOCOL from now on. The channel's own producer registration and idle timeout are
    removed, and reading resumes (the channel pauses it while a request is handled).
    """
    from twisted.protocols.policies import ProtocolWrapper

    channel = request.channel
    transport, channel.transport = channel.transport, None
    channel.setTimeout(None)
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    else:
        transport.protocol = protocol
    transport.unregisterProducer()
    protocol.makeConnection(transport)
    transport.resumeProducing()
    return transport


def take_at_accept(port: Any, take: Callable[[socket.socket, Any], bool]) -> bool:
    """Show TAKE each socket a plain TCP PORT accepts, with the protocol its factory built for
    it, before Twisted wraps it in a transport; whether PORT is such a port.

    When TAKE returns True it has dealt with the socket (answered and closed it), and the
    protocol's ``makeConnection`` gets None for a transport: the protocol must expect it.
    Twisted's port builds each accepted connection's transport by calling its ``transport``
    attribute with the socket, the protocol and the rest, then hands that to the protocol:
    the one point between accepting a socket and registering it with the reactor. A TLS
    port's protocols are wrapped in TLS's, and TAKE would see those; it is the caller's to
    check the factory.
    """
    if not isinstance(port, Port):
        return False
    make_transport = port.transport

    def transport(skt: socket.socket, protocol: Any, *rest: Any) -> Any:
        if take(skt, protocol):
            return None
        return make_transport(skt, protocol, *rest)

    port.transport = transport  # type: ignore[assignment]
    return True


def request_target(channel: Any) -> bytes | None:
    """The request-target (path and query) of the request whose headers are arriving.

    twisted.web sets ``Request.uri`` only once the whole body is in; the datalab checks an
    upload's signature as soon as its headers are in, before it stores a byte of the body
    (``Request.gotLength`` runs then, and the channel holds the target in ``_path``).
    """
    target = getattr(channel, "_path", None)
    return target if isinstance(target, bytes) else None


# -- Twisted's epoll reactor -------------------------------------------------------------------

#: Twisted's epoll reactor attributes `lean_dispatch` uses.
TWISTED_EPOLL_ATTRIBUTES = ("_poller", "_selectables", "_doReadOrWrite")


def lean_dispatch(reactor: Any) -> bool:
    """Dispatch epoll events straight to ``_doReadOrWrite``, without the legacy log context.

    Twisted's ``EPollReactor.doPoll`` wraps every event in ``log.callWithLogger``, which builds
    and merges a context dictionary so that old-style ``log.msg`` calls made while handling it
    carry the connection's ``logPrefix``. nbbridge logs through ``twisted.logger.Logger``,
    which never reads that context; on the data path the wrapping was about a fifth of a
    hop's CPU per event in py-spy profiles of round trips (bench/RESULTS.md, issue 17).
    Errors are handled exactly as before: ``_doReadOrWrite`` itself catches and logs what a
    protocol raises and disconnects that selectable.

    Returns whether the reactor was changed (only Twisted's epoll reactor is).
    """
    from twisted.internet.epollreactor import EPollReactor

    if type(reactor) is not EPollReactor:
        return False
    poll = reactor._poller.poll
    selectables = reactor._selectables
    handle = reactor._doReadOrWrite

    def do_poll(timeout: float | None) -> None:
        # An interrupted epoll_wait is retried by Python itself (PEP 475).
        for fd, event in poll(-1 if timeout is None else timeout, len(selectables)):
            selectable = selectables.get(fd)
            if selectable is not None:
                handle(selectable, fd, event)

    patched: Any = reactor  # mypy narrowed it to EPollReactor, whose methods it won't let us set
    patched.doPoll = patched.doIteration = do_poll
    return True
