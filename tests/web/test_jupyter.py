"""The proxy in front of a real jupyter-server: contents API, kernels (both framings), big files."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import treq

from nbbridge.web import Route, Upstream
from tests._tools import unavailable
from tests.tunnel._jupyter import Jupyter, missing_jupyter, start_jupyter

from ._kernel import V1, execute, open_kernel
from ._proxy import ProxyTestCase, tcp

MB = 1024 * 1024


class JupyterBehindProxyTests(ProxyTestCase):
    skip = unavailable(missing_jupyter())

    async def start(self, **route: Any) -> tuple[Jupyter, str]:
        jupyter = await start_jupyter(self)
        self.endpoint = tcp(jupyter.port)
        upstream = Upstream("jupyter", self.endpoint)
        # As datalab does: the browser never holds the token; the proxy injects it.
        base = await self.start_proxy(
            lambda request: Route(
                upstream,
                drop_headers=["Authorization"],
                set_headers={"Authorization": f"token {jupyter.token}"},
                **route,
            )
        )
        return jupyter, base

    async def call(self, method: str, url: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        response = await self.http.request(method, url, data=data, headers=headers)
        content = await treq.content(response)
        self.assertIn(response.code, (200, 201, 204), f"{method} {url}: {content[:300]!r}")
        return json.loads(content) if content else None

    async def test_contents_api(self) -> None:
        """GET, POST and PUT of /api/contents through the proxy."""
        jupyter, base = await self.start()
        status = await self.call("GET", f"{base}/api/status")
        self.assertIn("started", status)
        created = await self.call("POST", f"{base}/api/contents", {"type": "notebook"})
        self.assertTrue(jupyter.root.child(created["name"]).exists())
        text = "a,b\n1,2\n" * 1000
        saved = await self.call(
            "PUT",
            f"{base}/api/contents/data.csv",
            {"type": "file", "format": "text", "content": text},
        )
        self.assertEqual(saved["name"], "data.csv")
        self.assertEqual(jupyter.root.child("data.csv").getContent().decode(), text)
        read = await self.call("GET", f"{base}/api/contents/data.csv?content=1")
        self.assertEqual(read["content"], text)
        listing = await self.call("GET", f"{base}/api/contents")
        self.assertEqual(
            sorted(e["name"] for e in listing["content"]), sorted([created["name"], "data.csv"])
        )
        # All of it over one kept-alive upstream connection.
        self.assertEqual(self.endpoint.connections, 1)

    async def kernel_round_trip(self, v1: bool) -> None:
        _, base = await self.start()
        kernel = await self.call("POST", f"{base}/api/kernels", {"name": "python3"})
        channels = await open_kernel(self, self.proxy_port, kernel["id"], {}, v1=v1)
        self.assertEqual(channels.websocket_protocol_in_use, V1 if v1 else None)
        result = await execute(channels, "1+1")
        self.assertEqual(result["data"]["text/plain"], "2")
        await self.call("DELETE", f"{base}/api/kernels/{kernel['id']}")

    async def test_kernel_websocket_v1(self) -> None:
        await self.kernel_round_trip(v1=True)

    async def test_kernel_websocket_legacy(self) -> None:
        await self.kernel_round_trip(v1=False)

    async def test_refused_upgrade_keeps_status(self) -> None:
        """Jupyter refuses the kernel WebSocket of an unknown kernel: the browser sees 404."""
        _, base = await self.start()
        response = await self.http.get(
            f"{base}/api/kernels/00000000-0000-0000-0000-000000000000/channels",
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            },
        )
        body = await treq.content(response)
        self.assertEqual(response.code, 404, body[:200])

    async def test_large_download(self) -> None:
        """200 MB from /files/ streams through with the proxy holding little at any time."""
        jupyter, base = await self.start()
        digest = hashlib.sha256()
        with open(jupyter.root.child("big.bin").path, "wb") as f:
            for _ in range(200):
                piece = os.urandom(MB)
                digest.update(piece)
                f.write(piece)
        response = await self.http.get(f"{base}/files/big.bin")
        self.assertEqual(response.code, 200)
        received = hashlib.sha256()
        size = 0

        def take(data: bytes) -> None:
            nonlocal size
            received.update(data)
            size += len(data)

        await treq.collect(response, take)
        self.assertEqual(size, 200 * MB)
        self.assertEqual(received.hexdigest(), digest.hexdigest())
        self.assertLess(self.stats.peak_queued, 512 * 1024)
