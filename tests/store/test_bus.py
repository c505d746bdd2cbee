"""The bus suite against `MemoryBus` (two buses sharing one in-process network)."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial import unittest

from nbbridge.store import Bus, MemoryBus

from ._bus_suite import BusSuite


class MemoryBusSuite(BusSuite, unittest.TestCase):
    async def make_buses(self) -> tuple[Bus, Bus]:
        a = MemoryBus(reactor)  # type: ignore[arg-type]
        return a, MemoryBus(reactor, shared_with=a)  # type: ignore[arg-type]


class MemoryBusTests(unittest.TestCase):
    def test_unshared_buses_do_not_hear_each_other(self) -> None:
        from twisted.internet.task import Clock

        clock = Clock()
        a, b = MemoryBus(clock), MemoryBus(clock)
        got: list[bytes] = []
        b.subscribe("c", got.append)
        d = a.publish("c", b"x")
        clock.advance(0)
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(got, [])
