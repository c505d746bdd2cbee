"""The store suite against `MemoryStore` on a `Clock`, and what only the memory store promises."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial import unittest

from nbbridge.store import MemoryStore, Store

from ._suite import StoreSuite


class MemoryStoreSuite(StoreSuite, unittest.TestCase):
    """Every `Store` test, on a fake clock: time moves only when a test says so."""

    def make_store(self) -> Store:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        return MemoryStore(self.clock)

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def settle(self, d):  # type: ignore[no-untyped-def]
        self.clock.advance(0)  # answers come on a later turn
        return await d


class MemoryStoreWideMarginSuite(MemoryStoreSuite):
    """The suite as a real-time store (Redis) will run it: short TTL, widest margin allowed."""

    ttl = 1.0
    margin = 0.25


class MemoryStoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore(self.clock)

    def answer(self, d):  # type: ignore[no-untyped-def]
        self.clock.advance(0)
        return self.successResultOf(d)

    def test_expiry_at_exactly_the_ttl(self) -> None:
        self.answer(self.store.set("k", b"v", 2.5))
        self.clock.advance(2.5 - 1e-6)
        self.assertEqual(self.answer(self.store.get("k")), b"v")
        self.clock.advance(1e-6)  # exactly set time + TTL: gone
        self.assertIsNone(self.answer(self.store.get("k")))

    def test_answers_arrive_on_a_later_turn(self) -> None:
        d = self.store.add("k", b"v", None)
        self.assertNoResult(d)
        # The change itself is made at once: a second add in the same turn loses.
        second = self.store.add("k", b"w", None)
        self.clock.advance(0)
        self.assertEqual((self.successResultOf(d), self.successResultOf(second)), (True, False))

    def test_cancelled_answer_is_dropped_quietly(self) -> None:
        d = self.store.take("k")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.clock.advance(0)  # nothing fires twice
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unique_keys_with_ttls_do_not_grow_memory(self) -> None:
        # One write every 0.1 s with a 1 s TTL: about ten alive at any time, never more.
        for i in range(10_000):
            self.store.set(f"replay:{i}", b"1", 1.0)
            self.clock.advance(0.1)
            self.assertLessEqual(len(self.store), 11)
        # Reads remove what has expired too, without a write to sweep it.
        self.clock.advance(5)
        self.assertIsNone(self.answer(self.store.get("replay:9999")))

    def test_refresh_storm_keeps_bookkeeping_bounded(self) -> None:
        # Refreshing the same keys over and over must not pile up expiry records.
        for i in range(100):
            self.store.set(f"agent:{i}", b"relay", 30.0)
        for _ in range(200):
            for i in range(100):
                self.store.expire(f"agent:{i}", 30.0)
            self.clock.advance(0)  # (a Clock keeps its calls in a list it sorts)
        self.assertEqual(len(self.store), 100)
        self.assertLessEqual(len(self.store._expiries), 3 * 100 + 64)
        self.clock.advance(30)
        self.store.set("other", b"", None)  # a write sweeps
        self.assertEqual(len(self.store), 1)
