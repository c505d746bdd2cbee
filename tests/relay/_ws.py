"""Small Autobahn WebSocket clients for the relay tests: control, data and link connections."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS

from nbbridge.contract import bearer_headers


class HandshakeFailed(Exception):
    """The WebSocket never opened (e.g. HTTP 404)."""


class TestClient(WebSocketClientProtocol):
    """Records what happens: opened, each message, the close code and reason, the TCP loss."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: Deferred[None] = Deferred()
        self.closed: Deferred[tuple[int | None, str | None]] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.messages: DeferredQueue[tuple[bytes, bool]] = DeferredQueue()
        #: when set, called for each message instead of queueing it
        self.on_message: Callable[[bytes, bool], None] | None = None

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.on_message is not None:
            self.on_message(payload, isBinary)
        else:
            self.messages.put((payload, isBinary))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(HandshakeFailed(reason))
        if not self.closed.called:
            self.closed.callback((code, reason))

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        if not self.lost.called:
            self.lost.callback(None)

    @property
    def tcp(self) -> Any:
        return self.transport

    def close(self, code: int = 1000, reason: str = "done") -> None:
        if self.state == self.STATE_OPEN:
            self.sendClose(code, reason)


class Connector:
    """Opens test WebSockets to one relay and remembers them, so tests can wait for all."""

    def __init__(self, reactor: Any, port: int, ca_pem: bytes | None = None) -> None:
        self._reactor = reactor
        self.port = port
        self._ca_pem = ca_pem
        self.clients: list[TestClient] = []

    def url(self, path: str) -> str:
        if self._ca_pem is not None:
            return f"wss://localhost:{self.port}{path}"
        return f"ws://127.0.0.1:{self.port}{path}"

    async def connect(self, path: str, token: str | None = None) -> TestClient:
        """Open a WebSocket to PATH with TOKEN; returns once it is open."""
        headers = bearer_headers(token) if token is not None else {}
        factory = WebSocketClientFactory(self.url(path), headers=headers, reactor=self._reactor)
        factory.protocol = TestClient
        factory.setProtocolOptions(autoFragmentSize=0, failByDrop=False)
        endpoint: Any = TCP4ClientEndpoint(self._reactor, "127.0.0.1", self.port)
        if self._ca_pem is not None:
            trust = Certificate.loadPEM(self._ca_pem)
            endpoint = wrapClientTLS(optionsForClientTLS("localhost", trustRoot=trust), endpoint)
        client: TestClient = await endpoint.connect(factory)
        self.clients.append(client)
        await client.opened
        return client

    async def all_lost(self) -> None:
        for client in self.clients:
            client.close(1000, "test over")
        for client in self.clients:
            await client.lost
