# Autobahn's and Twisted's protocol APIs are untyped; calling them is the point of this module.
# mypy: disable-error-code="no-untyped-call"
"""Thin Autobahn protocols: they turn WebSocket callbacks into calls on the `Relay` core.

Each is a `nbbridge.websocket.ServerWebSocket` (token kept for `onOpen`, close codes, held
reads, a watch on the write buffer); refusals happen after the WebSocket opens, as close
codes: the handshake only records the bearer token, `onOpen` asks the core.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IReactorTime

from nbbridge._internals import write_now
from nbbridge.contract import CloseCode, Route, RouteKind, dial_message, registered_message
from nbbridge.websocket import (
    DataFrames,
    ServerWebSocket,
    peer_ip,
    set_server_options,
    xor_frame,
)
from nbbridge.wire.websocket import OP_BINARY, OP_CONTINUATION, OP_TEXT, MessageTooBig, frame_header

from ._auth import Refusal
from ._config import Limits
from ._core import PendingLink, Relay
from ._pairing import MAX_PAIR_MESSAGE
from ._splice import PEER_FULL, Splice

_CONTROL_MAX_MESSAGE = 64 * 1024
#: Why a client's link is not read: it waits for its agent's data connection.
WAITING_FOR_DIAL = "waiting-for-dial"


class RelayWebSocket(ServerWebSocket):
    """A WebSocket on one of the relay's routes, reporting to the `Relay` core."""

    factory: RelayWebSocketFactory
    route: Route

    @property
    def relay(self) -> Relay:
        """The core this connection reports to."""
        return self.factory.relay

    @property
    def label(self) -> str:
        return self.route.kind.value

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

    def send_dial(self, link_id: str, url: str) -> None:
        """Ask the agent for a data connection for LINK_ID at URL (a JSON text message)."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(dial_message(link_id, url).encode("utf-8"), isBinary=False)


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


class _PairProtocol(RelayWebSocket):
    """Either side of a pairing rendezvous: its messages are carried, unread, to the other."""

    gone = False

    @property
    def _address(self) -> str:
        peer = self.transport.getPeer() if self.transport is not None else None
        return peer_ip(peer) or "peer"

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.relay.pairing.carry(self, payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.gone = True
        self.relay.pairing.left(self, code, reason)

    def send_text(self, text: str) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(text.encode("utf-8"), isBinary=False)

    def send_binary(self, data: bytes) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(data, isBinary=True)


class PairOpenProtocol(_PairProtocol):
    """An agent (with its agent token) opens a pairing nameplate and waits for the client."""

    def onOpen(self) -> None:
        self.relay.pairing.open(self.route.agent, self.take_token(), self, self._address)


class PairJoinProtocol(_PairProtocol):
    """A client joins a nameplate by number (no token: the code is its secret)."""

    def onOpen(self) -> None:
        assert self.route.nameplate is not None
        self.relay.pairing.join(self.route.nameplate, self, self._address)


_PROTOCOLS: dict[RouteKind, type[RelayWebSocket]] = {
    RouteKind.CONTROL: ControlProtocol,
    RouteKind.LINK: LinkProtocol,
    RouteKind.DATA: DataProtocol,
    RouteKind.PAIR_OPEN: PairOpenProtocol,
    RouteKind.PAIR_JOIN: PairJoinProtocol,
}
_PAIRING = (RouteKind.PAIR_OPEN, RouteKind.PAIR_JOIN)


class RelayWebSocketFactory(WebSocketServerFactory):
    """Builds the protocol of one route kind, with the relay's limits and heartbeats."""

    def __init__(self, relay: Relay, kind: RouteKind, reactor: IReactorTime) -> None:
        super().__init__(server="nbbridge-relay", reactor=reactor)
        self.relay = relay
        self.protocol = _PROTOCOLS[kind]
        limits: Limits = relay.limits
        size = _CONTROL_MAX_MESSAGE if kind is RouteKind.CONTROL else limits.max_message_size
        if kind in _PAIRING:
            size = MAX_PAIR_MESSAGE
        # The relay never decodes what a link carries, not even to check its UTF-8.
        set_server_options(
            self,
            size,
            utf8=kind is RouteKind.CONTROL,
            ping_interval=limits.ping_interval,
            ping_timeout=limits.ping_timeout,
        )


def make_factories(relay: Relay, reactor: IReactorTime) -> dict[RouteKind, RelayWebSocketFactory]:
    """One factory per route kind."""
    return {kind: RelayWebSocketFactory(relay, kind, reactor) for kind in RouteKind}
