"""The store and bus suites against a real redis-server, and what only a network store does:
passwords, a Redis that restarts, is flushed or is down.

Each test starts its own redis-server (tests/_redis.py) on 127.0.0.1 and stops it after.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial import unittest

from nbbridge.store import (
    AgentRegistry,
    Backend,
    Bus,
    Health,
    Refresh,
    Store,
    StoreUnavailable,
    open_store,
)
from tests._cleanup import add_async_cleanup
from tests._redis import RedisServer, start_redis

from ._bus_suite import BusSuite, Inbox
from ._suite import StoreSuite


class RedisTestCase(unittest.TestCase):
    """Starts a redis-server; `backend` opens stores on it, closed at clean-up."""

    password: str | None = None

    async def start(self) -> RedisServer:
        self.redis = await start_redis(self, self.password)
        return self.redis

    def backend(self, password: str | None = None, url: str | None = None) -> Backend:
        backend = open_store(
            url or self.redis.url,
            password=password if password is not None else self.password,
            reactor=reactor,
        )
        add_async_cleanup(self, _close, backend)
        return backend

    async def connected(self, password: str | None = None) -> Backend:
        backend = self.backend(password)
        await backend.when_connected()
        return backend


async def _close(backend: Backend) -> None:
    await backend.close()


def health_changes(backend: Backend) -> list[Health]:
    seen: list[Health] = []
    backend.watch(seen.append)
    return seen


def next_health(backend: Backend, connected: bool) -> Deferred[Health]:
    """The next health with CONNECTED (now, if it is so already)."""
    d: Deferred[Health] = Deferred()
    if backend.health.connected == connected:
        d.callback(backend.health)
        return d

    def seen(health: Health) -> None:
        if health.connected == connected and not d.called:
            stop()
            d.callback(health)

    stop = backend.watch(seen)
    return d


class RedisStoreSuite(StoreSuite, RedisTestCase):
    """Every `Store` test on real Redis: real time, a 1 s TTL, a 0.2 margin."""

    ttl = 1.0
    margin = 0.2

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._set_up())

    async def _set_up(self) -> None:
        await self.start()
        self._backend = await self.connected()
        StoreSuite.setUp(self)

    def make_store(self) -> Store:
        return self._backend.store

    async def advance(self, seconds: float) -> None:
        # Redis's clock cannot be stepped: the suite lets real time pass (its docstring).
        await deferLater(reactor, seconds, lambda: None)


class RedisBusSuite(BusSuite, RedisTestCase):
    """Every `Bus` test on real Redis pub/sub: two backends, as two relays would have."""

    async def make_buses(self) -> tuple[Bus, Bus]:
        await self.start()
        a, b = await self.connected(), await self.connected()
        return a.bus, b.bus


class PasswordTests(RedisTestCase):
    password = "s3cret pass, from a file"

    async def test_the_right_password_connects(self) -> None:
        await self.start()
        backend = await self.connected()
        await backend.store.set("k", b"v", None)
        self.assertEqual(await backend.store.get("k"), b"v")
        self.assertIsNone(backend.health.reason)

    async def test_a_wrong_password_is_a_clear_reason_and_operations_fail_fast(self) -> None:
        await self.start()
        backend = self.backend(password="wrong")
        health = await _reason_settled(backend, "refused the password")
        self.assertFalse(health.connected)
        self.assertNotIn("wrong", health.describe())
        with self.assertRaises(StoreUnavailable) as caught:
            await backend.store.get("k")
        self.assertIn("refused the password", str(caught.exception))
        with self.assertRaises(StoreUnavailable):
            await backend.bus.subscribe("c", print)
        self.flushLoggedErrors()

    async def test_no_password_where_one_is_needed(self) -> None:
        await self.start()
        backend = open_store(self.redis.url, reactor=reactor)
        add_async_cleanup(self, _close, backend)
        health = await _reason_settled(backend, "asks for a password")
        self.assertIn("--store-password-file", health.reason or "")


async def _reason_settled(backend: Backend, words: str) -> Health:
    """Backend's health once its reason mentions WORDS."""
    if words in (backend.health.reason or ""):
        return backend.health
    d: Deferred[Health] = Deferred()

    def seen(health: Health) -> None:
        if words in (health.reason or "") and not d.called:
            d.callback(health)

    stop = backend.watch(seen)
    try:
        return await d
    finally:
        stop()


class OutageTests(RedisTestCase):
    async def test_restart_brings_back_store_and_subscriptions(self) -> None:
        await self.start()
        holder, other = await self.connected(), await self.connected()
        inbox = Inbox()
        await holder.bus.subscribe("topic:t", inbox)
        await holder.store.set("k", b"v", None)
        changes = health_changes(holder)

        await self.redis.stop()
        lost = await next_health(holder, connected=False)
        self.assertIn("lost", lost.reason or "")
        # Down: every operation fails at once, with the reason.
        with self.assertRaises(StoreUnavailable) as caught:
            await holder.store.get("k")
        self.assertIn("not available", str(caught.exception))
        with self.assertRaises(StoreUnavailable):
            await holder.bus.publish("topic:t", b"x")

        await self.redis.start()  # same port, empty (no persistence)
        await next_health(holder, connected=True)
        await next_health(other, connected=True)
        self.assertFalse(changes[0].connected)
        self.assertTrue(changes[-1].connected)
        self.assertIsNone(await holder.store.get("k"), "Redis restarted empty")
        await holder.store.set("k", b"again", None)
        self.assertEqual(await other.store.get("k"), b"again")
        # The subscription made before the restart is back.
        self.assertEqual(await other.bus.publish("topic:t", b"after"), 1)
        self.assertEqual(await inbox.until(1), [b"after"])

    async def test_flush_is_repaired_by_the_registry_refresh(self) -> None:
        await self.start()
        backend = await self.connected()
        registry = AgentRegistry(backend.store, ttl=30)
        await registry.register("gpu", "wss://relay-1.example/")
        await self.redis.cli("FLUSHALL")
        self.assertIsNone(await registry.where("gpu"))
        self.assertEqual(await registry.refresh("gpu", "wss://relay-1.example/"), Refresh.RESTORED)
        self.assertEqual(await registry.where("gpu"), "wss://relay-1.example/")
        self.assertTrue(backend.health.connected, "a flush does not cut the connection")

    async def test_redis_down_at_start_fails_fast_then_connects(self) -> None:
        await self.start()
        await self.redis.stop()
        backend = self.backend()
        health = await _reason_settled(backend, "cannot connect")
        self.assertFalse(health.connected)
        self.assertIn("cannot connect to Redis", health.describe())
        with self.assertRaises(StoreUnavailable):
            await backend.store.set("k", b"v", 5)
        await self.redis.start()
        await backend.when_connected()
        await backend.store.set("k", b"v", 5)
        self.assertEqual(await backend.store.get("k"), b"v")

    async def test_commands_in_flight_when_redis_dies_fail(self) -> None:
        await self.start()
        backend = await self.connected()
        self.redis.pause()  # SIGSTOP: the command is sent and never answered...
        pending = backend.store.get("k")
        await self.redis.kill()  # ...until the process dies and its sockets close
        with self.assertRaises(StoreUnavailable) as caught:
            await pending
        self.assertIn("lost", str(caught.exception))
