"""The proxy's HTTP path against small real upstreams on loopback (twisted.web, raw TCP)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from nbbridge.web import Refusal, Upstream
from nbbridge.websocket import ConnectionLimits, ConnectionTracker
from tests._loopback import LOOPBACK, serve

from ._proxy import BlackHoleEndpoint, ProxyTestCase, closed_port, tcp, to

MB = 1024 * 1024


class Echo(Resource):
    """Answers every request with what it received: method, path, headers, body digest."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        body = request.content.read() if request.content is not None else b""
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"keep-alive", b"timeout=5")
        request.setHeader(b"proxy-authenticate", b"Basic")
        request.addCookie(b"instance-login", b"secret")
        request.addCookie(b"other", b"kept")
        return json.dumps(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "headers": {
                    k.decode().lower(): [v.decode() for v in vs]
                    for k, vs in request.requestHeaders.getAllRawHeaders()
                },
                "length": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        ).encode()


class Hash(Resource):
    """Hashes a request body in pieces (twisted.web spooled it to a file)."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        digest, size = hashlib.sha256(), 0
        assert request.content is not None
        while piece := request.content.read(MB):
            digest.update(piece)
            size += len(piece)
        return json.dumps({"length": size, "sha256": digest.hexdigest()}).encode()


def pattern(size: int) -> tuple[list[bytes], str]:
    """SIZE bytes as 1 MiB pieces (a repeated pseudo-random block), and their SHA-256."""
    block = hashlib.sha256(b"seed").digest() * (MB // 32)
    pieces, digest, left, i = [], hashlib.sha256(), size, 0
    while left:
        piece = (block[i % 7 :] + block[: i % 7])[: min(MB, left)]
        pieces.append(piece)
        digest.update(piece)
        left -= len(piece)
        i += 1
    return pieces, digest.hexdigest()


@implementer(IBodyProducer)
class PiecesBody:
    """A request body from PIECES, written as the connection takes them (push producer)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = list(reversed(pieces))
        self.length = sum(len(p) for p in pieces)
        self._paused = False
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] = Deferred()

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        reactor.callLater(0, self._pump)
        return self._done

    def _pump(self) -> None:
        while self._pieces and not self._paused and self._consumer is not None:
            self._consumer.write(self._pieces.pop())
        if not self._pieces and not self._done.called:
            self._done.callback(None)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        reactor.callLater(0, self._pump)

    def stopProducing(self) -> None:
        self._consumer = None


class CutShort(Protocol):
    """Answers with a 10 MB Content-Length, sends 200 kB, then resets the connection."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" not in data:
            return
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (10 * MB) + b"x" * 200_000
        )
        reactor.callLater(0.05, self.transport.abortConnection)  # type: ignore[attr-defined]


class HeaderTests(ProxyTestCase):
    async def test_hop_by_hop_dropped_and_forwarded_set(self) -> None:
        port = await self.start_upstream(Echo())
        base = await self.start_proxy(to(Upstream("echo", tcp(port))))
        response = await self.http.get(
            f"{base}/some/path?q=1",
            headers={
                "Connection": "keep-alive, X-Custom",
                "X-Custom": "hop",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Proxy-Authorization": "Basic eA==",
                "Upgrade": "h2c",
                "X-Forwarded-For": "6.6.6.6",
                "X-End-To-End": "kept",
            },
        )
        seen = json.loads(await self.text(response))
        headers = seen["headers"]
        self.assertEqual(seen["uri"], "/some/path?q=1")
        for name in ("x-custom", "keep-alive", "te", "proxy-authorization", "upgrade"):
            self.assertNotIn(name, headers)
        self.assertNotIn("x-custom", ",".join(headers.get("connection", [])).lower())
        self.assertEqual(headers["x-end-to-end"], ["kept"])
        self.assertEqual(headers["x-forwarded-for"], ["127.0.0.1"])  # the spoof is dropped
        self.assertEqual(headers["x-forwarded-proto"], ["http"])
        self.assertEqual(headers["x-forwarded-host"], [f"127.0.0.1:{self.proxy_port}"])
        self.assertEqual(headers["host"], [f"127.0.0.1:{self.proxy_port}"])
        # And on the way back. (A header the upstream names in its own Connection header is
        # not dropped: twisted.web's client consumes that header; docs/web.md.)
        for name in (b"keep-alive", b"proxy-authenticate"):
            self.assertFalse(response.headers.hasHeader(name), name)

    async def test_trusted_front_extends_forwarded(self) -> None:
        port = await self.start_upstream(Echo())
        base = await self.start_proxy(to(Upstream("echo", tcp(port))), trust_forwarded=True)
        response = await self.http.get(
            f"{base}/",
            headers={
                "X-Forwarded-For": "203.0.113.9",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "lab.example",
            },
        )
        headers = json.loads(await self.text(response))["headers"]
        self.assertEqual(headers["x-forwarded-for"], ["203.0.113.9, 127.0.0.1"])
        self.assertEqual(headers["x-forwarded-proto"], ["https"])
        self.assertEqual(headers["x-forwarded-host"], ["lab.example"])

    async def test_route_rewrites(self) -> None:
        port = await self.start_upstream(Echo())

        def strip_login(headers: Headers) -> None:
            cookies = headers.getRawHeaders(b"set-cookie", [])
            headers.setRawHeaders(
                b"set-cookie", [c for c in cookies if not c.startswith(b"instance-login=")]
            )

        route = to(
            Upstream("echo", tcp(port), base_path=b"/base"),
            drop_cookies=["front-session"],
            drop_headers=["Authorization"],
            set_headers={"Authorization": "token T"},
            response_headers=strip_login,
        )
        base = await self.start_proxy(route)
        response = await self.http.post(
            f"{base}/api/x",
            data=b"hello",
            headers={"Authorization": "Bearer client", "Cookie": "a=1; front-session=s; b=2"},
        )
        seen = json.loads(await self.text(response))
        self.assertEqual(seen["uri"], "/base/api/x")
        self.assertEqual(seen["method"], "POST")
        self.assertEqual(seen["length"], 5)
        self.assertEqual(seen["headers"]["authorization"], ["token T"])
        self.assertEqual(seen["headers"]["cookie"], ["a=1; b=2"])
        cookies = response.headers.getRawHeaders(b"set-cookie")
        self.assertEqual([c.split(b";")[0] for c in cookies], [b"other=kept"])

    async def test_refusal(self) -> None:
        async def router(request: Any) -> Refusal:
            return Refusal(403, "no <session>", {"X-Why": "test"})

        base = await self.start_proxy(router)
        response = await self.http.get(f"{base}/x")
        page = await self.text(response)
        self.assertEqual(response.code, 403)
        self.assertIn(b"no &lt;session&gt;", page)
        self.assertEqual(response.headers.getRawHeaders(b"x-why"), [b"test"])


class NotModified(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(304)
        request.setHeader(b"etag", b'"v1"')
        return b""


class MethodTests(ProxyTestCase):
    async def test_head(self) -> None:
        port = await self.start_upstream(Echo())
        base = await self.start_proxy(to(Upstream("echo", tcp(port))))
        response = await self.http.head(f"{base}/x")
        self.assertEqual(response.code, 200)
        self.assertEqual(await self.text(response), b"")
        # The connection is still good for the next request.
        response = await self.http.get(f"{base}/y")
        self.assertEqual(json.loads(await self.text(response))["uri"], "/y")

    async def test_not_modified(self) -> None:
        port = await self.start_upstream(NotModified())
        base = await self.start_proxy(to(Upstream("nm", tcp(port))))
        response = await self.http.get(f"{base}/x", headers={"If-None-Match": '"v1"'})
        self.assertEqual(response.code, 304)
        self.assertEqual(response.headers.getRawHeaders(b"etag"), [b'"v1"'])
        self.assertEqual(await self.text(response), b"")
        response = await self.http.get(f"{base}/x")
        self.assertEqual(response.code, 304)
        await self.text(response)


class Endless(Resource):
    """Streams zeros for as long as the client reads; ``gone`` fires when its client left."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.gone: Deferred[None] = Deferred()

    def render(self, request: Request) -> Any:
        request.setHeader(b"content-length", b"%d" % (1 << 40))
        request.notifyFinish().addErrback(lambda _: self.gone.callback(None))

        @implementer(IPushProducer)
        class Zeros:
            paused = False

            def resumeProducing(self) -> None:
                self.paused = False
                while not self.paused and not request.finished and not self.stopped:
                    request.write(b"\0" * 65536)

            def pauseProducing(self) -> None:
                self.paused = True

            stopped = False

            def stopProducing(self) -> None:
                self.stopped = True

        zeros = Zeros()
        request.registerProducer(zeros, True)
        reactor.callLater(0, zeros.resumeProducing)
        return NOT_DONE_YET


class Slow(Resource):
    """Answers its head at once and finishes its body DELAY seconds later."""

    isLeaf = True

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def render(self, request: Request) -> Any:
        request.setHeader(b"content-length", b"4")
        request.write(b"sl")
        reactor.callLater(self.delay, lambda: (request.write(b"ow"), request.finish()))
        return NOT_DONE_YET


class Own(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return b"own:" + request.path


class MountTests(ProxyTestCase):
    async def test_children_served_by_themselves(self) -> None:
        """A front mounts its own API beside the proxy (datalab's /datalab/...)."""
        port = await self.start_upstream(Echo())
        base = await self.start_proxy(to(Upstream("echo", tcp(port))))
        self.proxy.putChild(b"datalab", Own())
        response = await self.http.get(f"{base}/datalab/view/x")
        self.assertEqual(await self.text(response), b"own:/datalab/view/x")
        response = await self.http.get(f"{base}/lab/tree/x?y=1")
        self.assertEqual(json.loads(await self.text(response))["uri"], "/lab/tree/x?y=1")


class TrackerTests(ProxyTestCase):
    async def test_routed_request_outlives_handshake_deadline(self) -> None:
        """Under a ConnectionTracker with a short handshake deadline, a slow answer completes."""
        port = await self.start_upstream(Slow(1.0))

        def wrap(site: Any) -> ConnectionTracker:
            return ConnectionTracker(site, reactor, ConnectionLimits(handshake_timeout=0.3))

        base = await self.start_proxy(to(Upstream("slow", tcp(port))), wrap_site=wrap)
        response = await self.http.get(f"{base}/")
        self.assertEqual(await self.text(response), b"slow")


class FailureTests(ProxyTestCase):
    async def test_router_error_500(self) -> None:
        def router(request: Any) -> Any:
            raise RuntimeError("router bug")

        base = await self.start_proxy(router)
        response = await self.http.get(f"{base}/x")
        self.assertEqual(response.code, 500)
        await self.text(response)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_client_leaving_ends_the_upstream(self) -> None:
        endless = Endless()
        port = await self.start_upstream(endless)
        base = await self.start_proxy(to(Upstream("endless", tcp(port))))
        response = await self.http.get(f"{base}/")
        got: Deferred[None] = Deferred()

        class Leave(Protocol):
            def dataReceived(self, data: bytes) -> None:
                if not got.called:
                    got.callback(None)
                    self.transport.stopProducing()  # type: ignore[union-attr]

        response.deliverBody(Leave())
        await got
        await endless.gone  # the proxy dropped the upstream connection

    async def test_upstream_down_502(self) -> None:
        base = await self.start_proxy(to(Upstream("down", tcp(closed_port()))))
        response = await self.http.get(f"{base}/x")
        page = await self.text(response)
        self.assertEqual(response.code, 502)
        self.assertIn(b"down", page)
        self.assertEqual(self.stats.bad_gateway, 1)

    async def test_connect_timeout_502(self) -> None:
        base = await self.start_proxy(
            to(Upstream("hole", BlackHoleEndpoint())), connect_timeout=0.2
        )
        response = await self.http.get(f"{base}/x")
        page = await self.text(response)
        self.assertEqual(response.code, 502)
        self.assertIn(b"no connection within", page)

    async def test_upstream_dies_mid_body(self) -> None:
        port = await serve(self, LOOPBACK, Factory.forProtocol(CutShort))
        base = await self.start_proxy(to(Upstream("cut", tcp(port))))
        response = await self.http.get(f"{base}/big")
        self.assertEqual(response.code, 200)
        with self.assertRaises(ResponseFailed):
            await self.text(response)
        self.assertEqual(self.stats.cut, 1)

    async def test_websocket_upstream_down_502(self) -> None:
        base = await self.start_proxy(to(Upstream("down", tcp(closed_port()))))
        response = await self.http.get(
            f"{base}/ws",
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            },
        )
        await self.text(response)
        self.assertEqual(response.code, 502)


class StreamingTests(ProxyTestCase):
    async def test_keep_alive_reuse(self) -> None:
        port = await self.start_upstream(Echo())
        endpoint = tcp(port)
        base = await self.start_proxy(to(Upstream("echo", endpoint)))
        for _ in range(20):
            response = await self.http.get(f"{base}/")
            await self.text(response)
        self.assertEqual(endpoint.connections, 1)

    async def test_large_upload(self) -> None:
        size = 200 * MB
        pieces, digest = pattern(size)
        port = await self.start_upstream(Hash())
        base = await self.start_proxy(to(Upstream("hash", tcp(port))))
        response = await self.http.put(f"{base}/up", data=PiecesBody(pieces))
        del pieces
        seen = json.loads(await self.text(response))
        self.assertEqual(seen, {"length": size, "sha256": digest})
        self.assertLess(self.stats.peak_queued, 512 * 1024)
        self.assertGreater(self.stats.peak_queued, 0)
