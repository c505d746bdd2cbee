"""``rediss://``: the store over TLS to a real redis-server (its ``tls-port``), with a test CA.

The server is Debian's redis-server 7 with TLS only (``port 0``, ``tls-port``), its
certificate issued by a CA this test makes (tests/transport/_certs.py). With
``--store-ca-file`` naming that CA the store connects, authenticates and works (the store
suite's basics and pub/sub); without it (the system's CAs) or with another CA the handshake
fails and the store's health says it cannot connect, never that it is up. A CA file with a
plain ``redis://`` URL, or one that cannot be read, is refused at once.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.trial import unittest

from nbbridge.store import Backend, StoreURLError, open_store
from tests._cleanup import add_async_cleanup
from tests._redis import REDIS_SERVER, RedisServer
from tests._tools import skip_unavailable
from tests.transport._certs import CA, ServerFiles, write_server_files

from ._bus_suite import Inbox
from .test_redis import _close, _reason_settled

PASSWORD = "tls-test-password"


class _TLSRedis(RedisServer):
    """A redis-server that listens with TLS only, on `port`."""

    def __init__(self, directory: str, files: ServerFiles) -> None:
        super().__init__(directory, PASSWORD)
        self.files = files

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def _write_config(self) -> str:
        path = super()._write_config()
        with open(path) as f:
            lines = f.read().splitlines()
        lines = [line for line in lines if not line.startswith("port ")]
        lines += [
            "port 0",
            f"tls-port {self.port}",
            f"tls-cert-file {self.files.cert}",
            f"tls-key-file {self.files.key}",
            f"tls-ca-cert-file {self.files.ca}",
            "tls-auth-clients no",
        ]
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path


class RedissTests(unittest.TestCase):
    async def start(self) -> _TLSRedis:
        if not os.access(REDIS_SERVER, os.X_OK):
            skip_unavailable(f"{REDIS_SERVER} not found: apt-get install redis-server")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.files = write_server_files(os.path.join(directory, "pki"), ("127.0.0.1",))
        server = _TLSRedis(directory, self.files)
        add_async_cleanup(self, server.stop)
        try:
            await server.start()
        except RuntimeError as e:
            if "tls" in str(e).lower():
                skip_unavailable(f"this redis-server has no TLS: {e}")
            raise
        self.server = server
        return server

    def backend(self, ca_file: str | None) -> Backend:
        backend = open_store(self.server.url, password=PASSWORD, ca_file=ca_file, reactor=reactor)
        add_async_cleanup(self, _close, backend)
        return backend

    async def test_with_the_ca_file_the_store_and_bus_work_over_tls(self) -> None:
        await self.start()
        backend = self.backend(self.files.ca)
        await backend.when_connected()
        self.assertTrue(backend.health.connected)
        self.assertEqual(backend.url, self.server.url)
        store = backend.store
        self.assertTrue(await store.add("k", b"v", 30))
        self.assertEqual(await store.get("k"), b"v")
        self.assertEqual(await store.take("k"), b"v")
        self.assertIsNone(await store.get("k"))
        inbox = Inbox()
        subscription = await backend.bus.subscribe("test:tls", inbox)
        self.assertEqual(await backend.bus.publish("test:tls", b"over tls"), 1)
        self.assertEqual(await inbox.until(1), [b"over tls"])
        await subscription.cancel()

    async def test_without_the_ca_the_server_is_not_trusted(self) -> None:
        await self.start()
        for ca_file in (None, write_server_files(self.mktemp(), ca=CA.create()).ca):
            backend = self.backend(ca_file)
            health = await _reason_settled(backend, "TLS with Redis failed")
            self.assertFalse(health.connected)
            self.assertIn("certificate verify failed", health.reason or "")
            self.assertFalse(backend.health.connected)

    def test_a_ca_file_needs_rediss_and_must_be_usable(self) -> None:
        with self.assertRaises(StoreURLError) as e:
            open_store("redis://127.0.0.1:1/0", ca_file="/etc/hostname", reactor=reactor)
        self.assertIn("needs a rediss://", str(e.exception))
        with self.assertRaises(StoreURLError) as e:
            open_store("memory", ca_file="/etc/hostname", reactor=reactor)
        self.assertIn("needs a rediss://", str(e.exception))
        missing = os.path.abspath(self.mktemp())
        with self.assertRaises(StoreURLError) as e:
            open_store("rediss://127.0.0.1:1/0", ca_file=missing, reactor=reactor)
        self.assertIn(f"--store-ca-file {missing}: cannot read it", str(e.exception))
