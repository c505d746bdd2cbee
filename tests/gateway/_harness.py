"""A gateway started in-process from its command line (``Options`` + ``makeService``), scripted
TCP services on 127.0.0.1, and WebSocket clients that can set ``Origin`` and subprotocols."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import TestCase

from nbbridge.gateway.tap import Options, makeService

from .._loopback import serve
from ..relay._ws import TestClient

#: What a VNC server says first (RFC 6143 §7.1.1).
RFB_GREETING = b"RFB 003.008\n"


class Greeter(Protocol):
    """A scripted service: says the RFB greeting, then echoes; records its connections."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self)  # type: ignore[attr-defined]
        self.transport.write(RFB_GREETING)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.lost.append(reason)  # type: ignore[attr-defined]
        for d in list(self.factory.lost_waiters):  # type: ignore[attr-defined]
            d.callback(None)
        self.factory.lost_waiters.clear()  # type: ignore[attr-defined]


class GreeterFactory(Factory):
    protocol = Greeter

    def __init__(self) -> None:
        self.connections: list[Greeter] = []
        self.lost: list[Any] = []
        self.lost_waiters: list[Deferred[Any]] = []

    def next_lost(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.lost_waiters.append(d)
        return d


async def greeter(test: TestCase) -> tuple[int, GreeterFactory]:
    """A scripted RFB-greeting echo service on 127.0.0.1; its port and factory."""
    factory = GreeterFactory()
    port = await serve(test, "tcp:0:interface=127.0.0.1", factory)
    return port, factory


class Gateway:
    """A running gateway: its ports, its service tree."""

    def __init__(self, service: Any, ws_port: int, http_port: int | None) -> None:
        self.service = service
        self.ws_port = ws_port
        self.http_port = http_port


async def start_gateway(test: TestCase, argv: list[str]) -> Gateway:
    """``twistd nbbridge-gateway ARGV`` in this process (ws_server_port 0 if not given)."""
    options = Options()
    options.parseOptions(argv)
    service = makeService(options, reactor)
    service.startService()
    test.addCleanup(service.stopService)
    ws = await service.getServiceNamed("ws").port
    http_port = None
    try:
        http = service.getServiceNamed("http")
    except KeyError:
        pass
    else:
        http_port = (await http.port).getHost().port
    return Gateway(service, ws.getHost().port, http_port)


async def open_ws(
    test: TestCase,
    port: int,
    path: str = "/",
    *,
    origin: str | None = None,
    protocols: list[str] | None = None,
    ca_pem: bytes | None = None,
    wait_open: bool = True,
) -> TestClient:
    """A WebSocket client to the gateway; closed and waited for at the end of the test."""
    scheme = "wss" if ca_pem is not None else "ws"
    host = "localhost" if ca_pem is not None else "127.0.0.1"
    factory = WebSocketClientFactory(
        f"{scheme}://{host}:{port}{path}",
        origin=origin,
        protocols=protocols or [],
        reactor=reactor,
    )
    factory.protocol = TestClient
    factory.setProtocolOptions(autoFragmentSize=0, failByDrop=False)
    endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    if ca_pem is not None:
        trust = Certificate.loadPEM(ca_pem)
        endpoint = wrapClientTLS(optionsForClientTLS("localhost", trustRoot=trust), endpoint)
    client: TestClient = await endpoint.connect(factory)

    async def done() -> None:
        client.close(1000, "test over")
        await client.lost

    test.addCleanup(lambda: Deferred.fromCoroutine(done()))
    if wait_open:
        await client.opened
    return client
