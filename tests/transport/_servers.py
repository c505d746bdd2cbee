"""Real loopback servers and small clients for transport and deploy tests.

Every server started here stops at the end of the test, and the clean-up waits until each of
its connections has closed, so no test leaves a socket behind for the next one (``serve``
itself, with ``Echo`` and ``Collector``, is in ``tests._loopback``).
"""

from __future__ import annotations

import json

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import (
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionRequest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from nbbridge.transport import websocket_options
from tests._loopback import serve

from ._certs import ServerFiles

#: The route the tests use, shaped like the relay's client link route.
LINK_ROUTE = "/v1/agents/gpu/link"


async def serve_tls(test: TestCase, files: ServerFiles, factory: IProtocolFactory) -> int:
    """Serve TLS with ``files`` on 127.0.0.1 (port 0), tracking connections outside TLS."""
    with open(files.cert, "rb") as c, open(files.key, "rb") as k:
        options = PrivateCertificate.loadPEM(c.read() + k.read()).options()
    tls = TLSMemoryBIOFactory(options, False, factory)
    return await serve(test, TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), tls)


# --- WebSocket --------------------------------------------------------------------------------


class EchoServerProtocol(WebSocketServerProtocol):
    """Echoes every message; remembers the handshake request of each connection."""

    def onConnect(self, request: ConnectionRequest) -> None:
        self.factory.requests.append(request)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


class StatusResource(Resource):
    """``GET /status``: JSON with the request's forwarded headers, like a relay's status page."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        seen = {
            name: (request.getHeader(name) or "")
            for name in ("authorization", "x-forwarded-for", "x-forwarded-proto", "host")
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"ok": True, "headers": seen}).encode()


class EchoServerFactory(WebSocketServerFactory):
    protocol = EchoServerProtocol

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[ConnectionRequest] = []


def echo_site() -> tuple[Site, EchoServerFactory]:
    """A twisted.web Site with a WebSocket echo at LINK_ROUTE and ``GET /status``."""
    ws = EchoServerFactory()
    ws.setProtocolOptions(**websocket_options(text=False))
    root = Resource()
    node = root
    parts = LINK_ROUTE.strip("/").split("/")
    for part in parts[:-1]:
        child = Resource()
        node.putChild(part.encode(), child)
        node = child
    node.putChild(parts[-1].encode(), WebSocketResource(ws))
    root.putChild(b"status", StatusResource())
    return Site(root), ws


class EchoClientProtocol(WebSocketClientProtocol):
    """A WebSocket client that records messages and says when it opened and closed."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: Deferred[None] = Deferred()
        self.closed: Deferred[tuple[bool, int | None, str | None]] = Deferred()
        self.messages: list[tuple[bytes, bool]] = []
        self._waiting: list[tuple[int, Deferred[list[tuple[bytes, bool]]]]] = []

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append((payload, isBinary))
        still = []
        for n, d in self._waiting:
            if len(self.messages) >= n:
                d.callback(self.messages[:n])
            else:
                still.append((n, d))
        self._waiting = still

    def wait_messages(self, n: int) -> Deferred[list[tuple[bytes, bool]]]:
        if len(self.messages) >= n:
            return succeed(self.messages[:n])
        d: Deferred[list[tuple[bytes, bool]]] = Deferred()
        self._waiting.append((n, d))
        return d

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"closed before open: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback((wasClean, code, reason))


# --- HTTP ------------------------------------------------------------------------------------


class _HTTPGet(Protocol):
    def __init__(self, request: bytes) -> None:
        self._request = request
        self.response = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self._request)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.response += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.done.callback(bytes(self.response))


async def http_get(
    endpoint: IStreamClientEndpoint, host: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """An HTTP/1.0 GET over ``endpoint``; returns once the server has closed the connection."""
    lines = [f"GET {path} HTTP/1.0", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    protocol = await endpoint.connect(Factory.forProtocol(lambda: _HTTPGet(request)))
    raw: bytes = await protocol.done  # type: ignore[attr-defined]
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return status, parsed, body
