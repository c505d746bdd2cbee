"""Options + makeService, and the real `twistd -n nbbridge-relay` end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from typing import Any

import treq
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from nbbridge._memory import IdleTrim
from nbbridge._secrets import token_digest
from nbbridge.relay import hash_token, tap
from nbbridge.relay._service import RelayService
from nbbridge.relay.tap import Options, makeService
from tests._cleanup import add_async_cleanup

from ._harness import FileTestCase

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))


def make(*argv: str) -> RelayService:
    options = Options()
    options.parseOptions(list(argv))
    return makeService(options, reactor=reactor)


class OptionsTests(FileTestCase):
    def write(self, text: str, mode: int | None = 0o600) -> str:
        return super().write(text, mode)

    def assertExit(self, argv: list[str], expected: str) -> str:
        with self.assertRaises(SystemExit) as caught:
            make(*argv)
        message = str(caught.exception.code)
        self.assertTrue(message.startswith("nbbridge-relay: "), message)
        self.assertIn(expected, message)
        self.assertNotIn("\n", message)
        return message

    def test_defaults(self) -> None:
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["listen"], "tcp:8765:interface=127.0.0.1")
        self.assertEqual(options["store"], "memory")
        service = makeService(options, reactor=reactor)
        self.assertIsInstance(service, RelayService)
        [listener, refresh] = [s for s in service if not isinstance(s, IdleTrim)]
        self.assertIsInstance(listener, StreamServerEndpointService)
        # The registry entries of agents held here are refreshed three times per TTL.
        self.assertIsInstance(refresh, TimerService)
        self.assertEqual(refresh.step, service.relay.registry.ttl / 3)
        self.assertEqual(refresh.call[0], service.relay.refresh_registry)
        self.assertTrue(service.relay.authority.open)

    def test_no_secret_options(self) -> None:
        # Secrets come from files or the environment, never from argv.
        names = {o[0] for o in Options.optParameters}
        self.assertEqual(
            names,
            {
                "listen",
                "config",
                "admin-token-file",
                "store",
                "store-password-file",
                "store-ca-file",
                "advertise-url",
            },
        )

    def test_store_url_errors_never_echo_the_url(self) -> None:
        message = self.assertExit(["--store", "redis://:hunter2@db:6379/0"], "no user or password")
        self.assertNotIn("hunter2", message)
        self.assertExit(["--store", "mysql://db/0"], "expected memory")
        self.assertExit(["--store", "redis://db:6379/0"], "needs --advertise-url")

    def test_advertise_url_is_checked_and_used(self) -> None:
        self.assertExit(["--advertise-url", "https://relay.example/"], "expected ws://")
        self.assertExit(["--advertise-url", "wss://relay.example/?a=b"], "takes no query")
        service = make("--advertise-url", "wss://relay.example/r1/")
        self.assertEqual(service.relay.where, "wss://relay.example/r1")
        self.assertTrue(
            service.relay.dial_url("gpu", "A" * 32).startswith("wss://relay.example/r1/v1/")
        )

    def test_store_ca_file_needs_rediss_and_a_readable_file(self) -> None:
        advertise = ["--advertise-url", "ws://127.0.0.1:8000/r1"]
        self.assertExit(["--store-ca-file", "/etc/hostname"], "needs a rediss://")
        self.assertExit(
            ["--store", "redis://127.0.0.1:1/0", "--store-ca-file", "/etc/hostname", *advertise],
            "needs a rediss://",
        )
        missing = self.write("") + ".missing"
        self.assertExit(
            ["--store", "rediss://127.0.0.1:1/0", "--store-ca-file", missing, *advertise],
            f"--store-ca-file {missing}: cannot read it",
        )

    def test_redis_store_opens_a_backend_closed_with_the_relay(self) -> None:
        password = self.write("sesame\n")
        service = make(
            "--store",
            "redis://127.0.0.1:1/0",
            "--store-password-file",
            password,
            "--advertise-url",
            "ws://127.0.0.1:8000/r1",
        )
        self.assertIsNotNone(service.relay.cluster)
        [backend] = [s for s in service if isinstance(s, tap.BackendService)]
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(backend.backend.url, "redis://127.0.0.1:1/0")

    def test_public_listen_needs_config(self) -> None:
        self.assertExit(["--listen", "tcp:8765"], "serves only on loopback")
        self.assertExit(["--listen", "tcp:8765:interface=0.0.0.0"], "not a loopback address")
        config = self.write("")
        service = make("--listen", "tcp:8765:interface=0.0.0.0", "--config", config)
        self.assertFalse(service.relay.authority.open)

    def test_config_errors(self) -> None:
        path = self.write("[agents.gpu]\ntoken_sha256 = 'abc'\n")
        self.assertExit(["--config", path], f"{path}: agents.gpu.token_sha256: must be 64 hex")
        self.assertExit(["--config", path + ".missing"], "cannot read")

    def test_config_limits(self) -> None:
        path = self.write(f"[agents.gpu]\ntoken_sha256 = '{hash_token('t')}'\n[limits]\n")
        self.assertEqual(make("--config", path).relay.limits.dial_timeout, 10.0)

    def test_bad_endpoint(self) -> None:
        self.assertExit(
            ["--listen", "ssl:0:privateKey=/nonexistent.pem:interface=127.0.0.1"],
            "/nonexistent.pem",
        )
        self.assertExit(["--listen", "tcp:notaport:interface=127.0.0.1"], "--listen")

    def test_admin_token_file(self) -> None:
        path = self.write("s3cret\n")
        options = Options()
        options.parseOptions(["--admin-token-file", path])
        self.assertEqual(tap._admin_sha256(options), token_digest("s3cret"))
        self.assertExit(["--admin-token-file", self.write("  \n")], "the file is empty")
        self.assertExit(["--admin-token-file", path + ".missing"], "cannot read")

    def test_admin_token_env(self) -> None:
        self.patch(os, "environ", {**os.environ, "NBBRIDGE_ADMIN_TOKEN": "from-env"})
        self.assertEqual(tap._admin_sha256(Options()), token_digest("from-env"))
        self.patch(os, "environ", {})
        self.assertIsNone(tap._admin_sha256(Options()))


class ServiceTests(unittest.TestCase):
    async def test_bare_port_serves_loopback_status(self) -> None:
        service = make("--listen", "0")
        service.startService()
        self.addCleanup(service.stopService)
        port = await service.when_listening()
        host = port.getHost()
        self.assertEqual(host.host, "127.0.0.1")
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        response = await treq.get(f"http://127.0.0.1:{host.port}/status", pool=pool)
        status = json.loads(await response.content())
        self.assertEqual(status["agents_online"], 0)
        # A deep accept queue, not Twisted's 50: a flood must not cost honest SYNs.
        self.assertEqual(port.backlog, 1024)  # type: ignore[attr-defined]


class _Twistd(ProcessProtocol):
    """Collects a twistd's output; fires when a line matches, and when it exits."""

    def __init__(self, pattern: str | None) -> None:
        self._pattern = re.compile(pattern) if pattern is not None else None
        self.output = b""
        self.errors = b""
        self.matched: Deferred[re.Match[str]] = Deferred()
        self.ended: Deferred[Exception] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self._pattern is None:
            return
        found = self._pattern.search(self.output.decode("utf-8", "replace"))
        if found and not self.matched.called:
            self.matched.callback(found)

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason: Failure) -> None:
        if self._pattern is not None and not self.matched.called:
            self.matched.errback(AssertionError(f"twistd ended: {self.output!r} {self.errors!r}"))
        self.ended.callback(reason.value)


class TwistdTests(unittest.TestCase):
    """The daemon as users run it: `twistd -n nbbridge-relay ...` in a subprocess."""

    timeout = 60

    def spawn(self, *args: str, pattern: str | None = None) -> _Twistd:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        cwd = self.mktemp()
        os.makedirs(cwd)
        env = {**os.environ, "PYTHONPATH": SRC}
        protocol = _Twistd(pattern)
        argv = [twistd, "-n", "nbbridge-relay", *args]
        transport: Any = reactor.spawnProcess(protocol, twistd, argv, env=env, path=cwd)
        add_async_cleanup(self, self._reap, protocol, transport)
        return protocol

    async def _reap(self, protocol: _Twistd, transport: Any) -> None:
        if not protocol.ended.called:
            transport.signalProcess("KILL")
        await protocol.ended

    async def test_relay_runs_and_stops(self) -> None:
        relay = self.spawn(
            "--listen",
            "tcp:0:interface=127.0.0.1",
            pattern=r"nbbridge relay listening on (ws://127\.0\.0\.1:(\d+)/)",
        )
        found = await relay.matched
        self.assertNotEqual(found.group(2), "0")
        pool = HTTPConnectionPool(reactor)
        response = await treq.get(found.group(1).replace("ws", "http", 1) + "status", pool=pool)
        status = json.loads(await response.content())
        await pool.closeCachedConnections()
        self.assertEqual(status["links"], 0)
        self.assertIn(b"no --config: accepting any token", relay.output)

        relay_transport = relay.transport
        assert relay_transport is not None
        relay_transport.signalProcess("TERM")
        ended = await relay.ended
        # twistd stops cleanly, then re-raises the signal so its exit status tells why.
        self.assertIsInstance(ended, ProcessTerminated)
        self.assertEqual(ended.signal, signal.SIGTERM)
        self.assertIn(b"Server Shut Down.", relay.output)

    async def test_refuses_public_listen_without_config(self) -> None:
        relay = self.spawn("--listen", "tcp:0")
        ended = await relay.ended
        self.assertIsInstance(ended, ProcessTerminated)
        self.assertEqual(ended.exitCode, 1)
        self.assertIn(
            b"nbbridge-relay: --listen tcp:0: it listens on every interface", relay.errors
        )
        self.assertEqual(relay.errors.count(b"\n"), 1, relay.errors)
