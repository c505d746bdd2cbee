"""The HTTP port: static files (MIME types, index files, no traversal, no listings)."""

from __future__ import annotations

import os

import treq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from .._loopback import Collector
from ._harness import start_gateway


class StaticTests(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        root = self.mktemp()
        self.site = os.path.join(root, "site")
        os.makedirs(os.path.join(self.site, "app", "sub"))
        files = {
            "index.html": "<h1>gateway</h1>",
            "app/vnc.js": "export const x = 1;",
            "app/style.css": "body {}",
            "app/sub/data.json": "{}",
        }
        for name, text in files.items():
            with open(os.path.join(self.site, name), "w") as f:
                f.write(text)
        with open(os.path.join(root, "secret.txt"), "w") as f:
            f.write("outside the directory")
        gw = await start_gateway(self, ["--http_directory", self.site, "--http_port", "0", "0"])
        self.port = gw.http_port

    async def get(self, path: str) -> tuple[int, bytes, bytes | None]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.get(f"http://127.0.0.1:{self.port}{path}", pool=pool)
        body = await response.content()
        return response.code, body, response.headers.getRawHeaders(b"content-type", [None])[0]

    async def test_index_and_types(self) -> None:
        self.assertEqual(
            await self.get("/"), (200, b"<h1>gateway</h1>", b"text/html; charset=utf-8")
        )
        code, _, kind = await self.get("/app/vnc.js")
        self.assertEqual((code, kind), (200, b"text/javascript"))
        code, _, kind = await self.get("/app/style.css")
        self.assertEqual((code, kind), (200, b"text/css"))
        code, _, kind = await self.get("/app/sub/data.json")
        self.assertEqual((code, kind), (200, b"application/json"))

    async def test_no_listing(self) -> None:
        code, body, _ = await self.get("/app/sub/")
        self.assertEqual(code, 404)
        self.assertNotIn(b"data.json", body)

    async def test_no_traversal(self) -> None:
        """Raw requests, so no client normalises the path first."""
        for path in (
            b"/../secret.txt",
            b"/app/../../secret.txt",
            b"/%2e%2e/secret.txt",
            b"/app/%2e%2e%2f%2e%2e%2fsecret.txt",
        ):
            collector = Collector()
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), collector)
            collector.transport.write(b"GET " + path + b" HTTP/1.0\r\nHost: x\r\n\r\n")  # type: ignore[union-attr]
            await collector.lost
            self.assertNotIn(b"outside the directory", bytes(collector.data), path)
            self.assertFalse(bytes(collector.data).startswith(b"HTTP/1.0 200"), path)

    async def test_missing(self) -> None:
        code, _, _ = await self.get("/nope.html")
        self.assertEqual(code, 404)
