# Autobahn's and Twisted's protocol APIs are untyped; calling them is the point of this module.
# mypy: disable-error-code="no-untyped-call"
"""The server-side WebSocket every nbbridge server builds on (relay routes, hub, gateway).

How the transport gets here: twisted.web's `HTTPChannel` registers itself as its transport's
push producer when the connection is made. Autobahn's `WebSocketResource` then takes the
transport away from the channel and calls our `makeConnection` with it, without unregistering
the channel. So `connectionMade` unregisters it and registers our own `WriteWatch`, which is
how we learn that the transport's write buffer is full (backpressure for splices and hub
receivers). `makeConnection` also steps past the `TrackedConnection` wrapper, because
Autobahn only recognises TLS when it is handed the TLS transport itself.

Refusals happen after the WebSocket opens, as close codes: the handshake only records the
bearer token (`onConnect`), `onOpen` asks the service's core.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

import attrs
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from nbbridge._internals import (
    SizeLimitHook,
    cancel_close_timer,
    fail_connection,
    ping_again_later,
)
from nbbridge._tuning import tune
from nbbridge.contract import CloseCode, parse_bearer

from ._tracking import TrackedConnection

#: The largest close reason a close frame holds, in bytes (RFC 6455: 125 minus the code).
MAX_REASON = 123


def truncate_reason(reason: str) -> bytes:
    """REASON as UTF-8, cut at a character boundary to fit a close frame (123 bytes)."""
    data = reason.encode("utf-8")
    if len(data) <= MAX_REASON:
        return data
    return data[:MAX_REASON].decode("utf-8", "ignore").encode("utf-8")


@implementer(IPushProducer)
class WriteWatch:
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
        # The transport is gone; onClose tells the service.
        pass


def set_server_options(
    factory: WebSocketServerFactory,
    max_message: int,
    *,
    utf8: bool,
    ping_interval: float,
    ping_timeout: float,
) -> None:
    """The options every nbbridge server factory uses: size limit, heartbeats, timeouts.

    :param max_message: the largest message (and frame) a peer may send us; what we send is
        not limited by it.
    :param utf8: validate incoming text (off where bytes are only carried, never decoded).
    """
    factory.setProtocolOptions(
        maxFramePayloadSize=max_message,
        maxMessagePayloadSize=max_message,
        autoFragmentSize=0,
        utf8validateIncoming=utf8,
        failByDrop=False,
        webStatus=False,
        autoPingInterval=ping_interval,
        autoPingTimeout=ping_timeout,
        openHandshakeTimeout=10,
        closeHandshakeTimeout=5,
    )


# (misc: Autobahn's own two base classes disagree on two attribute types.)
class ServerWebSocket(SizeLimitHook, WebSocketServerProtocol):  # type: ignore[misc]
    """What every nbbridge server WebSocket does: keep the token, close with a code, hold reads.

    Subclasses name themselves in logs (`label`) and say what a message over the size limit
    closes with (`too_big_code`).
    """

    _log = Logger()
    too_big_code: int = CloseCode.TOO_BIG

    def __init__(self) -> None:
        super().__init__()
        self._token: str | None = None
        self._holds: set[str] = set()
        self._write_watch = WriteWatch(self._write_full_changed)
        self._server_close: tuple[int, str] | None = None

    @property
    def label(self) -> str:
        """What this connection is, for log lines."""
        return "websocket"

    @property
    def write_full(self) -> bool:
        return self._write_watch.full

    @property
    def server_close(self) -> tuple[int, str] | None:
        """The code and reason we closed with, if we closed first."""
        return self._server_close

    @property
    def reading_paused(self) -> bool:
        """Whether we stopped reading this connection's transport."""
        return bool(self._holds)

    @property
    def _tcp(self) -> Any:
        # The transport as Twisted gives it (TCP, TLS or a wrapper): a consumer and producer.
        return self.transport

    def makeConnection(self, transport: Any) -> None:
        # Talk to the transport under our connection tracker: Autobahn must see TLS as TLS.
        if isinstance(transport, TrackedConnection):
            # The HTTP request is in: the handshake no longer counts against the limits.
            transport.upgraded()
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
        """The handshake's token, forgotten once used."""
        token, self._token = self._token, None
        return token

    def _write_full_changed(self, full: bool) -> None:
        """This connection's transport filled up (FULL) or drained."""

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
        ping_again_later(self)

    def pong_excused(self) -> bool:
        """Whether a missing pong may be our own doing (we stopped reading) rather than death."""
        return False

    def close(self, code: int, reason: str) -> None:
        """Close with CODE and REASON (any code, 1001 included), and read the peer's reply."""
        if self._server_close is None:
            self._server_close = (code, reason)
        if self._holds:
            # We must read the peer's close reply.
            self._holds.clear()
            if self._tcp is not None:
                self._tcp.resumeProducing()
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=truncate_reason(reason), isReply=False)
        elif self.state == WebSocketProtocol.STATE_CONNECTING:
            self.dropConnection(abort=True)

    def message_over_limit(self, size: int, limit: int) -> None:
        # Autobahn's size limit: close with our code (it would send 1009) and stop collecting.
        fail_connection(self, self.too_big_code, self._too_big(size, limit))

    def _too_big(self, size: int, limit: int) -> str:
        """Log and record a message over the limit; returns the close reason."""
        why = f"message of {size} bytes or more exceeds the limit of {limit} bytes"
        self._log.info("{label} closed: {why}", label=self.label, why=why)
        if self._server_close is None:
            self._server_close = (self.too_big_code, why)
        return why

    def shutdown(self, reason: str) -> None:
        """The server is stopping: close with 1001 ("going away")."""
        self.close(CloseCode.GOING_AWAY, reason)


P = TypeVar("P", bound=ServerWebSocket)


@attrs.frozen
class RouteBinding(Generic[P]):
    """What `WebSocketResource` sees as its factory: builds a protocol that knows its route.

    `WebSocketResource` takes one factory; a server with parameterised paths builds one
    binding per request, so the protocol learns what its path named before the handshake.
    """

    factory: WebSocketServerFactory
    route: object
    attribute: str = "route"

    def buildProtocol(self, addr: Any) -> P:
        protocol = cast(P, self.factory.buildProtocol(addr))
        setattr(protocol, self.attribute, self.route)
        return protocol
