"""A real Jupyter server reached through the whole tunnel: REST, kernel WebSocket, big files."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import uuid
from typing import Any

import treq

from tests._tools import unavailable

from ._harness import TunnelTestCase
from ._jupyter import Jupyter, execute_request, missing_jupyter, open_channels, start_jupyter

TEN_MB = 10 * 1024 * 1024


class JupyterThroughTunnelTests(TunnelTestCase):
    """Relay, agent exposing jupyter-server, client forwarding it; a user talks to the forward."""

    skip = unavailable(missing_jupyter())

    async def start(self) -> tuple[Jupyter, str]:
        jupyter = await start_jupyter(self)
        await self.start_relay()
        await self.start_agent({"jupyter": f"tcp:127.0.0.1:{jupyter.port}"})
        client = await self.start_client(forward=["jupyter"])
        return jupyter, f"http://127.0.0.1:{client.port('jupyter')}"

    async def request(self, method: str, url: str, jupyter: Jupyter, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(jupyter.auth)
        if data is not None:
            headers["Content-Type"] = "application/json"
        response = await self.http.request(method, url, data=data, headers=headers)
        content = await treq.content(response)
        self.assertIn(
            response.code, (200, 201, 204), f"{method} {url}: {response.code} {content[:300]!r}"
        )
        return json.loads(content) if content else None

    async def test_rest_and_kernel(self) -> None:
        """GET /api/status, start a kernel, run print(6*7) over its channels WebSocket."""
        jupyter, base = await self.start()
        status = await self.within(
            20, "GET /api/status", self.request("GET", f"{base}/api/status", jupyter)
        )
        self.assertIn("started", status)

        kernel = await self.within(
            60,
            "start a kernel",
            self.request("POST", f"{base}/api/kernels", jupyter, {"name": "python3"}),
        )
        kernel_id = kernel["id"]
        port = int(base.rsplit(":", 1)[1])
        channels = await self.within(
            60, "open the kernel WebSocket", open_channels(self, port, kernel_id, jupyter.auth)
        )
        request = execute_request("print(6*7)", uuid.uuid4().hex)
        channels.send_json(request)
        stream = await self.within(
            60, "stream output", channels.reply_to(request, "iopub", "stream")
        )
        self.assertEqual(stream["content"]["name"], "stdout")
        self.assertEqual(stream["content"]["text"], "42\n")
        reply = await self.within(
            20, "execute_reply", channels.reply_to(request, "shell", "execute_reply")
        )
        self.assertEqual(reply["content"]["status"], "ok")

        await self.within(
            30,
            "stop the kernel",
            self.request("DELETE", f"{base}/api/kernels/{kernel_id}", jupyter),
        )

    async def test_10_megabytes_up_and_down(self) -> None:
        """A 10 MB file through the contents API (base64 JSON), back with the same SHA-256."""
        jupyter, base = await self.start()
        data = random.Random(10).randbytes(TEN_MB)
        digest = hashlib.sha256(data).hexdigest()
        url = f"{base}/api/contents/big.bin"
        body = {"type": "file", "format": "base64", "content": base64.b64encode(data).decode()}
        saved = await self.within(60, "upload", self.request("PUT", url, jupyter, body))
        self.assertEqual(saved["size"], TEN_MB)
        on_disk = jupyter.root.child("big.bin").getContent()
        self.assertEqual(hashlib.sha256(on_disk).hexdigest(), digest)

        fetched = await self.within(
            60, "download", self.request("GET", f"{url}?content=1&format=base64&type=file", jupyter)
        )
        self.assertEqual(fetched["format"], "base64")
        back = base64.b64decode(fetched["content"])
        self.assertEqual(len(back), TEN_MB)
        self.assertEqual(hashlib.sha256(back).hexdigest(), digest)
