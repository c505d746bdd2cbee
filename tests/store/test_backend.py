"""`open_store`'s URLs, `read_password`, and the memory backend (no Redis needed)."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.trial import unittest

from nbbridge.store import (
    PASSWORD_ENV,
    MemoryBackend,
    StoreURL,
    StoreURLError,
    open_store,
    parse_store_url,
    read_password,
)


class URLTests(unittest.TestCase):
    def test_memory_and_redis_urls(self) -> None:
        self.assertEqual(parse_store_url("memory"), StoreURL("memory"))
        self.assertEqual(
            parse_store_url("redis://10.0.0.5:6380/2"), StoreURL("redis", "10.0.0.5", 6380, 2)
        )
        self.assertEqual(
            parse_store_url("redis://redis.internal"), StoreURL("redis", "redis.internal")
        )
        self.assertEqual(parse_store_url("redis://[::1]:7000/"), StoreURL("redis", "::1", 7000))
        tls = parse_store_url("rediss://redis.internal:6380/1")
        self.assertTrue(tls.tls)
        self.assertEqual(tls.redacted(), "rediss://redis.internal:6380/1")
        self.assertEqual(parse_store_url("redis://[::1]:7000/").redacted(), "redis://[::1]:7000/0")

    def test_bad_urls_are_refused_without_echoing_them(self) -> None:
        for url in (
            "redis://:hunter2@host:6379/0",
            "redis://user:hunter2@host/0",
            "http://hunter2.example/",
            "redis://host:99999999/0",
            "redis://host/db-hunter2",
            "redis:///0",
            "redis://host/0?password=hunter2",
            "hunter2",
        ):
            with self.assertRaises(StoreURLError) as caught:
                parse_store_url(url)
            self.assertNotIn("hunter2", str(caught.exception), url)
            self.assertIn("--store", str(caught.exception))
        with self.assertRaises(StoreURLError) as caught:
            parse_store_url("redis://:pw@host/0")
        self.assertIn("--store-password-file", str(caught.exception))


class PasswordTests(unittest.TestCase):
    def test_from_a_file_first_line_without_newline(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("pass word\nignored\n")
        self.assertEqual(read_password(path, {PASSWORD_ENV: "env"}), "pass word")

    def test_from_the_environment(self) -> None:
        self.assertEqual(read_password(None, {PASSWORD_ENV: "env"}), "env")
        self.assertIsNone(read_password(None, {}))
        self.assertIsNone(read_password(None, {PASSWORD_ENV: ""}))

    def test_empty_or_missing_file_is_an_error_naming_the_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("\n")
        with self.assertRaises(ValueError) as caught:
            read_password(path)
        self.assertIn(path, str(caught.exception))
        with self.assertRaises(OSError):
            read_password(os.path.join(path + ".d", "missing"))


class MemoryBackendTests(unittest.TestCase):
    async def test_memory_backend_is_connected_and_works(self) -> None:
        backend = open_store("memory", reactor=reactor)
        self.assertIsInstance(backend, MemoryBackend)
        self.assertTrue(backend.health.connected)
        self.assertIn("connected since", backend.health.describe())
        await backend.when_connected()
        await backend.store.set("k", b"v", None)
        self.assertEqual(await backend.store.get("k"), b"v")
        got: list[bytes] = []
        await backend.bus.subscribe("c", got.append)
        self.assertEqual(await backend.bus.publish("c", b"x"), 1)
        backend.watch(print)()
        await backend.close()
