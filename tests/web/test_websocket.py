"""The WebSocket path against raw upstreams on loopback: handshake order, backpressure, cuts."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from nbbridge.web import Upstream
from nbbridge.websocket import ConnectionLimits, ConnectionTracker
from tests._cleanup import add_async_cleanup
from tests._loopback import LOOPBACK, Collector, serve

from ._proxy import ProxyTestCase, tcp, to

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
V1 = b"v1.kernel.websocket.jupyter.org"
MB = 1024 * 1024


def accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


UPGRADE = (
    b"GET /api/kernels/k/channels HTTP/1.1\r\nHost: lab\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
    b"Sec-WebSocket-Protocol: " + V1 + b"\r\n\r\n"
)


@implementer(IPushProducer)
class HeldUpstream(Protocol):
    """Reads an upgrade request and answers only when told; then echoes or streams."""

    def __init__(self) -> None:
        self.head = b""
        self.got_head: Deferred[bytes] = Deferred()
        self.received = bytearray()
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self._to_send = 0
        self._paused = False
        self.digest = hashlib.sha256()
        self._wanted: tuple[int, Deferred[None]] | None = None

    def wait_received(self, n: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._wanted = (n, d)
        self._check()
        return d

    def _check(self) -> None:
        if self._wanted is not None and len(self.received) >= self._wanted[0]:
            (_, d), self._wanted = self._wanted, None
            d.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if not self.got_head.called:
            self.head += data
            if b"\r\n\r\n" in self.head:
                self.head, rest = self.head.split(b"\r\n\r\n", 1)
                self.received += rest
                self.got_head.callback(self.head)
            return
        self.received += data
        self._check()

    def answer(self) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept(KEY) + b"\r\n"
            b"Sec-WebSocket-Protocol: " + V1 + b"\r\n\r\n"
        )

    def stream(self, size: int) -> None:
        """Send SIZE bytes as fast as the connection takes them."""
        self._to_send = size
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        while self._to_send and not self._paused:
            piece = bytes([self._to_send % 251]) * min(MB, self._to_send)
            self._to_send -= len(piece)
            self.digest.update(piece)
            self.transport.write(piece)  # type: ignore[union-attr]
        if not self._to_send:
            self.transport.unregisterProducer()  # type: ignore[union-attr]

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._to_send = 0

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.lost.callback(None)


class HeldFactory(Factory):
    """Builds `HeldUpstream`s; ``built`` fires with the first."""

    def __init__(self) -> None:
        self.built: Deferred[HeldUpstream] = Deferred()

    def buildProtocol(self, addr: Any) -> HeldUpstream:
        protocol = HeldUpstream()
        if not self.built.called:
            self.built.callback(protocol)
        return protocol


class WebSocketTests(ProxyTestCase):
    async def setup(self, tracker: bool = False) -> Collector:
        self.upstream_factory = HeldFactory()
        port = await serve(self, LOOPBACK, self.upstream_factory)
        wrap = None
        if tracker:

            def wrap(site: Any) -> ConnectionTracker:
                self.tracker = ConnectionTracker(site, reactor, ConnectionLimits())
                return self.tracker

        await self.start_proxy(to(Upstream("ws", tcp(port))), wrap_site=wrap)
        client = Collector()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy_port)
        await endpoint.connect(Factory.forProtocol(lambda: client))

        async def close() -> None:
            if not client.lost.called:
                client.transport.abortConnection()  # type: ignore[union-attr]
                await client.lost

        add_async_cleanup(self, close)
        return client

    async def accepted(self) -> HeldUpstream:
        return await self.upstream_factory.built

    async def test_handshake_completes_after_upstream(self) -> None:
        client = await self.setup()
        client.transport.write(UPGRADE)  # type: ignore[union-attr]
        upstream = await self.accepted()
        head = await upstream.got_head
        head = head.lower()  # (header names are case-insensitive; Twisted recases them)
        self.assertIn(b"sec-websocket-key: " + KEY.lower(), head)
        self.assertIn(b"sec-websocket-protocol: " + V1, head)
        self.assertIn(b"x-forwarded-for: 127.0.0.1", head)
        self.assertEqual(bytes(client.data), b"")  # nothing before the upstream's 101
        upstream.answer()
        upstream.transport.write(b"\x81\x02hi")  # type: ignore[union-attr]
        answer = await client.receive(len(b"\x81\x02hi") + 10)
        self.assertTrue(bytes(client.data).startswith(b"HTTP/1.1 101 "))
        self.assertIn(b"sec-websocket-accept: " + accept(KEY).lower(), bytes(client.data).lower())
        self.assertIn(b"sec-websocket-protocol: " + V1, bytes(client.data).lower())
        self.assertTrue(bytes(client.data).endswith(b"\r\n\r\n\x81\x02hi"), answer)
        # And the other way: bytes reach the upstream unchanged.
        client.transport.write(b"\x81\x82abcd" + bytes([ord("o") ^ 0x61, ord("k") ^ 0x62]))  # type: ignore[union-attr]
        await upstream.wait_received(8)
        self.assertEqual(bytes(upstream.received[:6]), b"\x81\x82abcd")
        # An orderly end on one side is an orderly end on the other.
        upstream.transport.loseConnection()  # type: ignore[union-attr]
        await client.lost
        assert client.reason is not None
        self.assertTrue(client.reason.check(ConnectionDone))

    async def test_under_a_connection_tracker(self) -> None:
        """As a front's Site runs it: a routed upgrade ends the handshake guard; close_all ends
        the pair."""
        client = await self.setup(tracker=True)
        client.transport.write(UPGRADE)  # type: ignore[union-attr]
        upstream = await self.accepted()
        await upstream.got_head
        (wrapper,) = self.tracker.protocols
        self.assertFalse(wrapper.handshaking)  # routed: no handshake deadline any more
        upstream.answer()
        upstream.transport.write(b"\x81\x02hi")  # type: ignore[union-attr]
        await client.receive(150)
        while not bytes(client.data).endswith(b"\r\n\r\n\x81\x02hi"):
            await client.receive(len(client.data) + 1)
        self.tracker.close_all("stopping")
        await client.lost
        await upstream.lost
        self.assertTrue(upstream.reason.check(ConnectionDone))  # type: ignore[union-attr]

    async def test_backpressure_and_cut(self) -> None:
        client = await self.setup()
        client.transport.pauseProducing()  # type: ignore[union-attr]  # a browser that reads nothing
        client.transport.write(UPGRADE)  # type: ignore[union-attr]
        upstream = await self.accepted()
        await upstream.got_head
        upstream.answer()
        proxy_full: Deferred[None] = Deferred()
        self.stats.on_read_paused = lambda: proxy_full.called or proxy_full.callback(None)
        total = 256 * MB
        upstream.stream(total)
        # The proxy stops reading the upstream once the browser's side is full.
        await proxy_full
        # The upstream is held back, with most of the stream not sent, and the proxy holds
        # little: the rest waits in socket buffers, not in memory.
        self.assertGreater(upstream._to_send, total // 2)
        self.assertLess(self.stats.peak_queued, 512 * 1024)
        # The upstream resets: the browser's connection is aborted, never closed cleanly.
        upstream.transport.abortConnection()  # type: ignore[union-attr]
        client.transport.resumeProducing()  # type: ignore[union-attr]
        await client.lost
        assert client.reason is not None
        self.assertFalse(client.reason.check(ConnectionDone), client.reason)
