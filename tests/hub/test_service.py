"""The hub as users get it: relay.toml's [hub] through makeService, and a real twistd."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from nbbridge.relay import hash_token
from nbbridge.relay.tap import Options, makeService
from tests._cleanup import add_async_cleanup

from ..relay._harness import FileTestCase
from ..relay._ws import Connector
from ..relay.test_tap import SRC, _Twistd
from ._schema import DOCUMENT, check

CAMERA = "camera-token-0123456789"
STATS = "stats-token-0123456789"
CONFIG = f"""
[hub]
prefix = "/lab/streams"
queue_bytes = 1048576
max_message_size = 65536
stats_interval = 1
stats_token_sha256 = "{hash_token(STATS)}"

[hub.tokens.camera]
token_sha256 = "{hash_token(CAMERA)}"

[[hub.access]]
topics = ["cam*"]
send = ["camera"]
"""


class MakeServiceTests(FileTestCase):
    def test_hub_section(self) -> None:
        options = Options()
        options.parseOptions(["--config", self.write(CONFIG)])
        service = makeService(options, reactor=reactor)
        hub = service.connections.wrappedFactory.extensions["hub"].hub
        self.assertEqual(hub.config.prefix, "/lab/streams")
        self.assertEqual(hub.config.queue_bytes, 1048576)
        self.assertEqual(hub.config.token_name(CAMERA), "camera")

    def test_bad_hub_section_is_one_line(self) -> None:
        options = Options()
        path = self.write('[hub]\nprefix = "/metrics"\n')
        options.parseOptions(["--config", path])
        with self.assertRaises(SystemExit) as caught:
            makeService(options, reactor=reactor)
        message = str(caught.exception.code)
        self.assertEqual(
            message,
            f"nbbridge-relay: {path}: hub.prefix: /metrics is one of the relay's own routes",
        )


def protocol_sees(protocol: _Twistd, text: bytes) -> Deferred[bytes]:
    """Fires with the first line of PROTOCOL's output from now on that holds TEXT."""
    seen: Deferred[bytes] = Deferred()
    start = len(protocol.output)
    received = protocol.outReceived

    def out(data: bytes) -> None:
        received(data)
        if seen.called:
            return
        for line in protocol.output[start:].splitlines(keepends=True):
            if text in line and line.endswith(b"\n"):
                protocol.outReceived = received  # type: ignore[method-assign]
                seen.callback(line)
                return

    protocol.outReceived = out  # type: ignore[method-assign]
    return seen


class TwistdHubTests(unittest.TestCase):
    """`twistd -n nbbridge-relay --config relay.toml` serving the hub, stats and metrics."""

    timeout = 60

    async def test_twistd_serves_the_hub(self) -> None:
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        config = os.path.join(cwd, "relay.toml")
        with open(config, "w") as f:
            f.write(CONFIG)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        protocol = _Twistd(r"nbbridge relay listening on ws://127\.0\.0\.1:(\d+)/")
        argv = [
            twistd,
            "-n",
            "--pidfile=",
            "nbbridge-relay",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--config",
            config,
        ]
        env = {**os.environ, "PYTHONPATH": SRC}
        transport: Any = reactor.spawnProcess(protocol, twistd, argv, env=env, path=cwd)
        add_async_cleanup(self, self._reap, protocol, transport)
        port = int((await protocol.matched).group(1))

        connector = Connector(reactor, port)
        add_async_cleanup(self, connector.all_lost)
        reader = await connector.connect("/lab/streams/out/cam1")
        refused = await connector.connect("/lab/streams/in/cam1")
        self.assertEqual((await refused.closed)[0], 4401)
        sender = await connector.connect("/lab/streams/in/cam1", CAMERA)
        sender.sendMessage(b"\x00frame", isBinary=True)
        self.assertEqual(await reader.messages.get(), (b"\x00frame", True))

        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        base = f"http://127.0.0.1:{port}"
        bearer = {"Authorization": f"Bearer {STATS}"}
        response = await treq.get(base + "/stats/json", headers=bearer, pool=pool)
        doc = json.loads(await response.content())
        check(self, doc, DOCUMENT)
        [topic] = doc["topics"]
        self.assertEqual((topic["name"], topic["messages_out"]), ("cam1", 1))
        self.assertEqual(doc["prefix"], "/lab/streams")
        metrics = await (await treq.get(base + "/metrics", headers=bearer, pool=pool)).content()
        self.assertIn(b"nbbridge_hub_delivered_messages_total 1.0", metrics)
        self.assertIn(b'nbbridge_hub_refused_connections_total{reason="bad_token"} 1.0', metrics)

        # Issue 16: `/stats?token=...` was written to the relay's access log as it came.
        logged = protocol_sees(protocol, b'"GET /stats?token=')
        await (await treq.get(f"{base}/stats?token={STATS}", pool=pool)).content()
        await treq.get(f"{base}/stats/json?token={STATS}&x=1", pool=pool)
        line = await logged
        self.assertIn(b'"GET /stats?token=REDACTED HTTP/1.1" 303', line)
        reader.close()
        await reader.lost
        await connector.connect(f"/lab/streams/out/cam1?token={CAMERA}")
        # Every log line so far, up to the next request's: no token in any of them.
        logged = protocol_sees(protocol, b'"GET /status')
        await (await treq.get(f"{base}/status", pool=pool)).content()
        await logged
        for secret in (STATS, CAMERA):
            self.assertNotIn(secret.encode(), protocol.output + protocol.errors)

    async def _reap(self, protocol: _Twistd, transport: Any) -> None:
        if not protocol.ended.called:
            transport.signalProcess("TERM")
        await protocol.ended
