# Autobahn's and Twisted's protocol APIs are untyped; calling them is the point of this module.
# mypy: disable-error-code="no-untyped-call"
"""Thin Autobahn protocols: they turn WebSocket callbacks into calls on the `Relay` core.

How the transport gets here: twisted.web's `HTTPChannel` registers itself as its transport's
push producer when the connection is made. Autobahn's `WebSocketResource` then takes the
transport away from the channel and calls our `makeConnection` with it, without unregistering
the channel. So `connectionMade` unregisters it and registers our own `_WriteWatch`, which is
how we learn that the transport's write buffer is full (backpressure for the splice).
`makeConnection` also steps past our `TrackedConnection` wrapper, because Autobahn only
recognises TLS when it is handed the TLS transport itself.

Refusals happen after the WebSocket opens, as close codes: the handshake only records the
bearer token, `onOpen` asks the core.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from nbbridge._tuning import tune, write_now
from nbbridge.transport._frames import DataFrames, cancel_close_timer, xor_frame
from nbbridge.wire.websocket import OP_BINARY, OP_CONTINUATION, OP_TEXT, MessageTooBig, frame_header

from ._auth import Refusal
from ._config import Limits
from ._contract import CloseCode, Route, RouteKind, dial_message, parse_bearer, registered_message
from ._core import PendingLink, Relay
from ._splice import PEER_FULL, Splice
from ._tracking import TrackedConnection

_CONTROL_MAX_MESSAGE = 64 * 1024
#: Why a client's link is not read: it waits for its agent's data connection.
WAITING_FOR_DIAL = "waiting-for-dial"


def truncate_reason(reason: str) -> bytes:
    """REASON as UTF-8, cut at a character boundary to fit a close frame (123 bytes)."""
    data = reason.encode("utf-8")
    if len(data) <= 123:
        return data
    return data[:123].decode("utf-8", "ignore").encode("utf-8")


@implementer(IPushProducer)
class _WriteWatch:
    """Registered as the producer of a connection's own transport, to hear when it is full."""

    def __init__(self, changed: Callable[[bool], None]) -> None:
        self._changed = changed
        self.full = False

    def pauseProducing(self) -> None:
        if not self.full:
            self.full = True
            self._changed(True)

    def resumeProducing(self) -> None:
        if self.full:
            self.full = False
            self._changed(False)

    def stopProducing(self) -> None:
        # The transport is gone; onClose tells the relay.
        pass


class RelayWebSocket(WebSocketServerProtocol):
    """What every relay WebSocket does: read the token, close with a code, pause reading."""

    _log = Logger()
    factory: RelayWebSocketFactory
    route: Route

    def __init__(self) -> None:
        super().__init__()
        self._token: str | None = None
        self._holds: set[str] = set()
        self._write_watch = _WriteWatch(self._write_full_changed)
        self._relay_close: tuple[int, str] | None = None

    @property
    def relay(self) -> Relay:
        """The core this connection reports to."""
        return self.factory.relay

    @property
    def write_full(self) -> bool:
        return self._write_watch.full

    @property
    def relay_close(self) -> tuple[int, str] | None:
        return self._relay_close

    @property
    def reading_paused(self) -> bool:
        """Whether the relay stopped reading this connection's transport."""
        return bool(self._holds)

    @property
    def _tcp(self) -> Any:
        # The transport as Twisted gives it (TCP, TLS or a wrapper): a consumer and producer.
        return self.transport

    def makeConnection(self, transport: Any) -> None:
        # Talk to the transport under our connection tracker: Autobahn must see TLS as TLS.
        if isinstance(transport, TrackedConnection):
            transport = transport.transport
        super().makeConnection(transport)

    def connectionMade(self) -> None:
        super().connectionMade()
        tune(self._tcp)
        # Take the HTTPChannel's place as the transport's producer (see the module docstring).
        self._tcp.unregisterProducer()
        self._tcp.registerProducer(self._write_watch, True)

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        cancel_close_timer(self)

    def onConnect(self, request: Any) -> None:
        # Keep only the token; it is checked in onOpen so that a refusal is a close code.
        self._token = parse_bearer(request.headers)

    def take_token(self) -> str | None:
        """The handshake's bearer token, forgotten once used."""
        token, self._token = self._token, None
        return token

    def _write_full_changed(self, full: bool) -> None:
        """This connection's transport filled up (FULL) or drained; only splices care."""

    def hold_reading(self, reason: str) -> None:
        """Stop reading this connection's transport while REASON holds."""
        if not self._holds and self._tcp is not None:
            self._tcp.pauseProducing()
        self._holds.add(reason)

    def release_reading(self, reason: str) -> None:
        """REASON no longer holds; read again once no reason is left."""
        if reason not in self._holds:
            return
        self._holds.discard(reason)
        if not self._holds and self._tcp is not None:
            self._tcp.resumeProducing()

    def onAutoPingTimeout(self) -> None:
        if not self.pong_excused():
            super().onAutoPingTimeout()
            return
        # Ask again later rather than drop a healthy peer behind a slow one.
        self.autoPingTimeoutCall = None
        self.autoPingPending = None
        self.autoPingPendingCall = self.factory._batched_timer.call_later(
            self.autoPingInterval,  # type: ignore[attr-defined]
            self._sendAutoPing,
        )

    def pong_excused(self) -> bool:
        """Whether a missing pong may be the relay's own doing rather than a dead peer."""
        return False

    def close(self, code: int, reason: str) -> None:
        """Close with CODE and REASON (any code, 1001 included), and read the peer's reply."""
        if self._relay_close is None:
            self._relay_close = (code, reason)
        if self._holds:
            # We must read the peer's close reply.
            self._holds.clear()
            if self._tcp is not None:
                self._tcp.resumeProducing()
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=truncate_reason(reason), isReply=False)
        elif self.state == WebSocketProtocol.STATE_CONNECTING:
            self.dropConnection(abort=True)

    def _max_message_size_exceeded(self, msg_size: int, max_msg_size: int, reason: str) -> None:
        # Autobahn's hook for its size limit: close with our code (it would send 1009).
        # _fail_connection also stops Autobahn from collecting the rest of the message.
        self._fail_connection(CloseCode.TOO_BIG, self._too_big(msg_size, max_msg_size))

    def _too_big(self, size: int, limit: int) -> str:
        """Log and record a message over the limit; returns the close reason."""
        why = f"message of {size} bytes or more exceeds the limit of {limit} bytes"
        self._log.info("{route} closed: {why}", route=self.route.kind.value, why=why)
        if self._relay_close is None:
            self._relay_close = (CloseCode.TOO_BIG, why)
        return why

    def shutdown(self, reason: str) -> None:
        """The relay is stopping: close with 1001 ("going away")."""
        self.close(CloseCode.GOING_AWAY, reason)

    def refuse(self, refusal: Refusal) -> None:
        """Close with the core's refusal."""
        self.close(refusal.code, refusal.reason)


class ControlProtocol(RelayWebSocket):
    """An agent's control connection: registers the agent, carries dial requests to it."""

    def onOpen(self) -> None:
        refusal = self.relay.register_agent(self.route.agent, self.take_token(), self)
        if refusal is not None:
            self.refuse(refusal)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        # Agents have nothing to tell the relay yet; ignore rather than fail, for newer agents.
        self._log.debug("agent {agent}: ignored a control message", agent=self.route.agent)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.relay.agent_gone(self.route.agent, self)

    def send_registered(self, name: str) -> None:
        """Only now may the agent say it is online: a refusal would come after the open."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(registered_message(name).encode("utf-8"), isBinary=False)

    def send_dial(self, link_id: str) -> None:
        """Ask the agent for a data connection for LINK_ID (a JSON text message)."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(dial_message(link_id).encode("utf-8"), isBinary=False)


# (misc: Autobahn's own two base classes disagree on two attribute types.)
class _SpliceProtocol(DataFrames, RelayWebSocket):  # type: ignore[misc]
    """Either end of a splice: data frames are read as they come and re-framed for the peer."""

    def __init__(self) -> None:
        super().__init__()
        self.splice: Splice | None = None

    def onOpen(self) -> None:
        self.read_data_frames(max_message=self.relay.limits.max_message_size)

    def send(self, frame: bytes) -> None:
        """Write frames re-framed by the other end."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            write_now(self.transport, frame)

    def _write_full_changed(self, full: bool) -> None:
        if self.splice is not None:
            self.splice.write_full_changed(self, full)

    def on_data_piece(
        self, piece: memoryview, key: bytes, offset: int, first: bool, last: bool
    ) -> None:
        # A piece of the peer's message becomes a frame of our own: same payload, unmasked,
        # FIN where the message ends (the other end sees the same message, fragmented anew).
        if first:
            assert self._frames is not None
            opcode = OP_BINARY if self._frames.binary else OP_TEXT
        else:
            opcode = OP_CONTINUATION
        header = frame_header(opcode, len(piece), fin=last)
        self.received(xor_frame(header, (piece,), key, offset), len(piece))

    def received(self, frame: bytes, size: int) -> None:
        """FRAME, carrying SIZE payload bytes, is ready for the other end."""
        if self.splice is not None:
            self.splice.forward(self, frame, size)

    def message_too_big(self, error: MessageTooBig) -> None:
        self._fail(CloseCode.TOO_BIG, self._too_big(error.size, error.limit))

    def pong_excused(self) -> bool:
        # Not read because the partner is full, the peer's pong may wait unread in the
        # socket. The partner itself is read and so judged by its own pings: if it is dead,
        # the splice ends. If both ends are held (each full of the other's bytes), neither
        # is excused, or two dead peers would hold the link for ever.
        if self.splice is None or PEER_FULL not in self._holds:
            return False
        return not self.splice.partner(self).reading_paused

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.splice is not None:
            self.splice.end_closed(self, code, reason)


class LinkProtocol(_SpliceProtocol):
    """A client's link: waits (not reading) until its agent dials in, then is spliced."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: PendingLink | None = None
        self._early: list[tuple[bytes, int]] = []
        self._early_size = 0

    def onOpen(self) -> None:
        super().onOpen()
        # Read nothing more until the agent answers: what already arrived is queued, bounded.
        self.hold_reading(WAITING_FOR_DIAL)
        result = self.relay.request_link(self.route.agent, self.take_token(), self)
        if isinstance(result, Refusal):
            self.refuse(result)
        else:
            self.pending = result

    def received(self, frame: bytes, size: int) -> None:
        if self.splice is not None or self.pending is None:
            super().received(frame, size)
            return
        self._early_size += size
        limit = self.relay.limits.pending_buffer
        if self._early_size > limit:
            self.close(CloseCode.LIMIT, f"sent over {limit} bytes before the agent answered")
            return
        self._early.append((frame, size))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.pending is not None:
            self.relay.abandon_link(self.pending)
            self.pending = None
        self._early = []
        super().onClose(wasClean, code, reason)

    def join(self, splice: Splice) -> None:
        """The agent answered: forward what waited, and read again."""
        self.pending = None
        self.splice = splice
        early, self._early = self._early, []
        splice.start(early)
        self.release_reading(WAITING_FOR_DIAL)

    @property
    def waiting(self) -> bool:
        """Whether this link is open and still waiting for its agent."""
        return self.pending is not None and self.state == WebSocketProtocol.STATE_OPEN


class DataProtocol(_SpliceProtocol):
    """An agent's data connection: answers a dial and is spliced to the waiting client."""

    def onOpen(self) -> None:
        super().onOpen()
        assert self.route.link_id is not None
        result = self.relay.answer_dial(self.route.agent, self.route.link_id, self.take_token())
        if isinstance(result, Refusal):
            self.refuse(result)
            return
        client, link = result
        if not isinstance(client, LinkProtocol) or not client.waiting:
            self.relay.link_ended(link)
            self.close(CloseCode.GOING_AWAY, "the client left")
            return
        self.splice = Splice(self.relay, link, client=client, agent=self)
        client.join(self.splice)


_PROTOCOLS: dict[RouteKind, type[RelayWebSocket]] = {
    RouteKind.CONTROL: ControlProtocol,
    RouteKind.LINK: LinkProtocol,
    RouteKind.DATA: DataProtocol,
}


class RelayWebSocketFactory(WebSocketServerFactory):
    """Builds the protocol of one route kind, with the relay's limits and heartbeats."""

    def __init__(self, relay: Relay, kind: RouteKind, reactor: IReactorTime) -> None:
        super().__init__(server="nbbridge-relay", reactor=reactor)
        self.relay = relay
        self.protocol = _PROTOCOLS[kind]
        limits: Limits = relay.limits
        size = _CONTROL_MAX_MESSAGE if kind is RouteKind.CONTROL else limits.max_message_size
        # The relay never decodes what a link carries, not even to check its UTF-8.
        set_server_options(self, limits, size, utf8=kind is RouteKind.CONTROL)


def set_server_options(factory: Any, limits: Limits, max_message: int, *, utf8: bool) -> None:
    """The options every relay-side WebSocket factory uses: size limit, heartbeats, timeouts."""
    factory.setProtocolOptions(
        maxFramePayloadSize=max_message,
        maxMessagePayloadSize=max_message,
        autoFragmentSize=0,
        utf8validateIncoming=utf8,
        failByDrop=False,
        webStatus=False,
        autoPingInterval=limits.ping_interval,
        autoPingTimeout=limits.ping_timeout,
        openHandshakeTimeout=10,
        closeHandshakeTimeout=5,
    )


def make_factories(relay: Relay, reactor: IReactorTime) -> dict[RouteKind, RelayWebSocketFactory]:
    """One factory per route kind."""
    return {kind: RelayWebSocketFactory(relay, kind, reactor) for kind in RouteKind}
