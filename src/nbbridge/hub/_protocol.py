# Autobahn's and Twisted's protocol APIs are untyped; calling them is the point of this module.
# mypy: disable-error-code="no-untyped-call"
"""Thin Autobahn protocols for the hub: topic members and the JSON stats stream.

They build on `nbbridge.websocket.ServerWebSocket`, so a hub connection behaves like every other
connection of the relay's port: it is registered as its own transport's push producer (that is
how the hub learns a receiver is full), it steps past the connection tracker, closes with a code
and reason, and is closed when the server stops. Refusals happen after the WebSocket opens, as
close codes.
"""

from __future__ import annotations

from typing import Any, cast

import attrs
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nbbridge._internals import autobahn_has_queued
from nbbridge.contract import parse_bearer
from nbbridge.websocket import ServerWebSocket, set_server_options

from ._access import Refused
from ._config import HubConfig, StatsView
from ._core import Hub, Member, Message
from ._routes import BadRoute, HubCloseCode, HubRoute
from ._stats_access import stats_token
from ._stats_cache import StatsDocuments

#: Nothing a stats viewer sends matters; anything bigger than this closes it. (Incoming only:
#: the documents the relay sends grow with the hub and are sent as prepared frames.)
_STATS_MAX_MESSAGE = 4096


@attrs.frozen
class Heartbeat:
    """How often the hub's WebSockets ping, and how long a pong may take (the relay's)."""

    interval: float
    timeout: float

    def options(self) -> dict[str, float]:
        return {"ping_interval": self.interval, "ping_timeout": self.timeout}


def hub_token(authorization: str | None, query_token: str | None) -> str | None:
    """`Authorization: Bearer` first, else the `?token=` query value.

    Browsers cannot set headers on a WebSocket, hence the query form (for topics only; the
    relay's access log redacts it, a proxy in front may not).
    """
    bearer = parse_bearer({"authorization": authorization}) if authorization is not None else None
    return bearer or query_token or None


def bearer_or_query_token(request: Any) -> str | None:
    """The hub token of an Autobahn handshake REQUEST."""
    values = request.params.get("token")
    return hub_token(request.headers.get("authorization"), str(values[0]) if values else None)


def describe_peer(address: Any) -> str:
    """`host:port` of a peer address (`[v6]:port` for IPv6), or its repr."""
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    return str(address)


class _HubWebSocket(ServerWebSocket):
    """What hub connections share: the query-string token and the size-limit close."""

    remote = "?"
    too_big_code = HubCloseCode.TOO_BIG

    @property
    def label(self) -> str:
        return f"hub connection from {self.remote}"

    def onConnect(self, request: Any) -> None:
        self._token = bearer_or_query_token(request)
        self.remote = describe_peer(self.transport.getPeer() if self.transport else None)


class HubMemberProtocol(_HubWebSocket):
    """A connection on a topic: what it sends goes to the hub, what the hub sends goes out."""

    #: set by the resource before the handshake: the route the path named (or why it names none)
    binding: HubRoute | BadRoute

    def __init__(self) -> None:
        super().__init__()
        self.member: Member | None = None

    @property
    def hub_factory(self) -> HubFactory:
        return cast(HubFactory, self.factory)

    @property
    def hub(self) -> Hub:
        return self.hub_factory.hub

    def onOpen(self) -> None:
        result = self.hub.join(self.binding, self.take_token(), self, self.remote)
        if isinstance(result, Refused):
            self.close(result.code, result.reason)
            return
        self.member = result
        if self.write_full:
            self.hub.write_full_changed(result, True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        member = self.member
        if member is None:
            return
        # Frame once here; each receiver gets the same bytes (server frames are unmasked).
        frame = (
            self.hub_factory.prepareMessage(payload, isBinary, doNotCompress=True).payloadHybi
            if member.route.role.sends
            else None
        )
        self.hub.publish(member, Message(len(payload), isBinary, frame, payload))

    def _write_full_changed(self, full: bool) -> None:
        if self.member is not None:
            self.hub.write_full_changed(self.member, full)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.member is not None:
            self.hub.leave(self.member)

    def send(self, message: Message) -> None:
        """Write MESSAGE's prepared frame (MemberPeer)."""
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        if autobahn_has_queued(self) or self.transport is None:
            # Autobahn has frames of its own waiting (never, without chopsize); keep the order.
            self.sendData(message.frame)
        else:
            self.transport.write(message.frame)


class HubFactory(WebSocketServerFactory):
    """Builds topic members with the hub's message limit and the relay's heartbeats."""

    def __init__(self, hub: Hub, heartbeat: Heartbeat, reactor: IReactorTime) -> None:
        super().__init__(server="nbbridge-relay", reactor=reactor)
        self.protocol = _MEMBER
        self.hub = hub
        config: HubConfig = hub.config
        # Text goes to many receivers: invalid UTF-8 would fail every one of them.
        set_server_options(self, config.max_message_size, utf8=True, **heartbeat.options())


class StatsStreamProtocol(_HubWebSocket):
    """`/stats/ws`: the stats document as a JSON text message now and every interval.

    The stats token comes from `Authorization: Bearer` or the page's cookie, never the URL.
    """

    #: what this viewer may see; set in onOpen
    view: StatsView = "none"

    @property
    def stream(self) -> StatsStreamFactory:
        return cast(StatsStreamFactory, self.factory)

    def onConnect(self, request: Any) -> None:
        super().onConnect(request)
        self._token = stats_token(
            hub_token(request.headers.get("authorization"), None), request.headers.get("cookie")
        )

    def onOpen(self) -> None:
        view = self.stream.config.stats_view(self.take_token())
        if view == "none":
            self.close(HubCloseCode.BAD_TOKEN, "the stats need the stats token")
            return
        self.view = view
        self.stream.subscribers.add(self)
        self.push(self.stream.prepared(view))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        # Viewers have nothing to say; ignore rather than fail.
        pass

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.stream.subscribers.discard(self)

    def push(self, document: Any) -> None:
        """Send the prepared DOCUMENT unless the viewer has not read the previous ones (skip)."""
        if self.state == WebSocketProtocol.STATE_OPEN and not self.write_full:
            # A prepared frame: the 4 KiB limit on what viewers send never applies to it.
            self.sendPreparedMessage(document)


class StatsStreamFactory(WebSocketServerFactory):
    """Builds stats viewers; `broadcast` sends this interval's document to all of them."""

    _log = Logger()

    def __init__(
        self,
        config: HubConfig,
        documents: StatsDocuments,
        heartbeat: Heartbeat,
        reactor: IReactorTime,
    ) -> None:
        super().__init__(server="nbbridge-relay", reactor=reactor)
        self.protocol = _VIEWER
        self.config = config
        self.documents = documents
        self.subscribers: set[StatsStreamProtocol] = set()
        set_server_options(self, _STATS_MAX_MESSAGE, utf8=True, **heartbeat.options())

    def prepared(self, view: StatsView) -> Any:
        """This interval's document in VIEW, framed once for every viewer of that view."""
        return self.prepareMessage(self.documents.get(view), False, doNotCompress=True)

    def broadcast(self) -> None:
        """Send the current document to every viewer (built once, only if someone watches).

        A viewer that fails is closed and logged; the others still get the document.
        """
        viewers = list(self.subscribers)
        # Built and framed once per view in use; a failure here is the broadcast job's to log.
        frames = {view: self.prepared(view) for view in {v.view for v in viewers}}
        for viewer in viewers:
            try:
                viewer.push(frames[viewer.view])
            except Exception:
                self._log.failure("stats viewer {remote} failed; closing it", remote=viewer.remote)
                self.subscribers.discard(viewer)
                viewer.dropConnection(abort=True)


_MEMBER: type[ServerWebSocket] = HubMemberProtocol
_VIEWER: type[ServerWebSocket] = StatsStreamProtocol
