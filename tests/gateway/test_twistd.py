"""`twistd -n nbbridge-gateway` end to end: the plug-in, the original's command line,
--verbose/--log_file, a WebSocket, and /v1/stop ending the process with status 0."""

from __future__ import annotations

import json
import os

import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from ..tunnel._process import child_env, spawn, twistd_command
from ._harness import RFB_GREETING, greeter, open_ws


class TwistdTests(TestCase):
    timeout = 120

    async def test_run_and_stop(self) -> None:
        target, _ = await greeter(self)
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "www"))
        with open(os.path.join(root, "www", "index.html"), "w") as f:
            f.write("<p>hello</p>")
        log_file = os.path.join(root, "gateway.log")
        argv = twistd_command(
            "nbbridge-gateway",
            [
                "--http_directory", os.path.join(root, "www"),
                "--http_port", "0",
                "--client_hostname", "127.0.0.1",
                "--client_port", str(target),
                "--timeout", "300",
                "--verbose", "1",
                "--log_file", log_file,
                "0",
            ],
        )  # fmt: skip
        process = spawn(self, "nbbridge-gateway", argv, child_env(), cwd=root)
        ws = await process.wait_for(r"listening on ws://127\.0\.0\.1:(\d+)/")
        http = await process.wait_for(r"listening on http://127\.0\.0\.1:(\d+)/")
        base = f"http://127.0.0.1:{http.group(1)}"
        client = await open_ws(self, int(ws.group(1)), "/")
        self.assertEqual(await client.messages.get(), (RFB_GREETING, True))

        async def get(path: str) -> tuple[int, bytes]:
            pool = HTTPConnectionPool(reactor, persistent=False)
            response = await treq.get(base + path, pool=pool)
            return response.code, await response.content()

        self.assertEqual(await get("/"), (200, b"<p>hello</p>"))
        code, body = await get("/v1/status")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["services"], {})
        code, body = await get("/v1/stop")
        self.assertEqual((code, json.loads(body)), (200, {"stopping": True}))
        self.assertEqual(await client.closed, (1001, "the gateway is stopping"))
        await process.ended
        self.assertTrue(process.exited_cleanly(), process.tail())
        with open(log_file) as f:
            logged = f.read()
        self.assertIn("listening on ws://127.0.0.1:", logged)
        self.assertIn("/v1/stop called by loopback", logged)
