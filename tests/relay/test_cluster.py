"""Relays sharing a store and a bus, as the core sees them: a Clock, fake peers, no sockets.

Three `Relay` cores share one `MemoryStore` and one in-process bus (`_LocalBus`, below): the
real processes, Redis and HAProxy are in tests/cluster.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from nbbridge.contract import CloseCode, parse_control_message
from nbbridge.relay._auth import Authority
from nbbridge.relay._cluster import Claimed, Cluster, DialRequest, channel_for, decode, encode
from nbbridge.relay._config import Limits
from nbbridge.relay._core import PendingLink, Relay
from nbbridge.store import AgentRegistry, MemoryStore

from .test_core import FakeLink


@attrs.define
class _Sub:
    bus: _LocalBus
    channel: str
    handler: Callable[[bytes], None]

    def cancel(self) -> Deferred[None]:
        self.bus.subs.remove(self)
        return succeed(None)


@attrs.define
class _LocalBus:
    """Channels in this process; delivery on a later turn of CLOCK, as over a network."""

    clock: Clock
    subs: list[_Sub] = attrs.Factory(list)
    down: bool = False

    def publish(self, channel: str, message: bytes) -> Deferred[int]:
        if self.down:
            return fail(ConnectionError("bus unreachable"))
        targets = [s for s in self.subs if s.channel == channel]
        for s in targets:
            self.clock.callLater(0, s.handler, message)
        return succeed(len(targets))

    def subscribe(self, channel: str, handler: Callable[[bytes], None]) -> Deferred[Any]:
        if self.down:
            return fail(ConnectionError("bus unreachable"))
        sub = _Sub(self, channel, handler)
        self.subs.append(sub)
        return succeed(sub)


class _FlakyStore(MemoryStore):
    """A memory store that can be 'unreachable' on demand."""

    down = False

    def get(self, key: str) -> Deferred[bytes | None]:
        return fail(ConnectionError("store unreachable")) if self.down else super().get(key)

    def set(self, key: str, value: bytes, ttl: float | None) -> Deferred[None]:
        if self.down:
            return fail(ConnectionError("store unreachable"))
        return super().set(key, value, ttl)

    def expire_if(self, key: str, value: bytes, ttl: float) -> Deferred[bool]:
        if self.down:
            return fail(ConnectionError("store unreachable"))
        return super().expire_if(key, value, ttl)

    def expire_if_many(
        self, items: Sequence[tuple[str, bytes]], ttl: float
    ) -> Deferred[list[bool]]:
        if self.down:
            return fail(ConnectionError("store unreachable"))
        return super().expire_if_many(items, ttl)


@attrs.define
class Control:
    """An agent's control connection that records its dials (absolute URLs here)."""

    dials: list[tuple[str, str]] = attrs.Factory(list)
    closed: tuple[int, str] | None = None
    registered: str | None = None

    def send_registered(self, name: str) -> None:
        self.registered = name

    def send_dial(self, link_id: str, url: str) -> None:
        self.dials.append((link_id, url))

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class ClusterCoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = _FlakyStore(self.clock)
        self.bus = _LocalBus(self.clock)
        self.relays = [self.make_relay(n) for n in (1, 2, 3)]
        for relay in self.relays:
            self.cluster_of(relay).start()
        self.turn()

    def make_relay(self, n: int) -> Relay:
        return Relay(
            Authority(None),
            Limits(),
            self.clock,
            advertise_url=f"ws://lb.example/r{n}",
            registry=AgentRegistry(self.store, ttl=30),
            bus=self.bus,
        )

    @staticmethod
    def cluster_of(relay: Relay) -> Cluster:
        assert relay.cluster is not None
        return relay.cluster

    def turn(self, n: int = 6) -> None:
        """Let the store's and the bus's answers arrive (each on a later turn)."""
        for _ in range(n):
            self.clock.advance(0)

    def test_messages_round_trip_and_bad_ones_are_refused(self) -> None:
        url = "ws://lb/r2/v1/agents/gpu/data/" + "A" * 32
        dial = DialRequest("gpu", "A" * 32, url)
        self.assertEqual(decode(encode(dial)), dial)
        self.assertEqual(decode(encode(Claimed("gpu", "ws://x"))), Claimed("gpu", "ws://x"))
        # The agent reads the same dial message the bus carried.
        parsed = parse_control_message(json.dumps({"op": "dial", "link": "A" * 32, "url": url}))
        self.assertEqual((parsed.link_id, parsed.url), ("A" * 32, url))  # type: ignore[union-attr]
        for bad in (
            b"not json",
            b"[]",
            b'{"op": "dial", "agent": "gpu"}',
            b'{"op": "nope", "agent": "gpu"}',
            b'{"op": "claimed", "agent": "../x", "where": "w"}',
            encode(DialRequest("other", "A" * 32, url)),  # names another agent's route
            b"{" + b" " * 5000 + b"}",
        ):
            with self.assertRaises(ValueError):
                decode(bad)

    def test_client_at_one_relay_reaches_agent_at_another(self) -> None:
        r1, _, r3 = self.relays
        control = Control()
        self.assertIsNone(r1.register_agent("gpu", None, control))
        self.turn()
        link = FakeLink()
        pending = r3.request_link("gpu", None, link)
        assert isinstance(pending, PendingLink)
        self.turn()
        # Relay 1 passed the dial on: the agent dials back to relay 3, where the client waits.
        [(link_id, url)] = control.dials
        self.assertEqual(link_id, pending.link_id)
        self.assertEqual(url, f"ws://lb.example/r3/v1/agents/gpu/data/{link_id}")
        result = r3.answer_dial("gpu", link_id, None)
        self.assertIsInstance(result, tuple)
        self.assertIsNone(link.closed)
        self.assertEqual(r3.status()["cluster"]["remote_dials"], 1)

    def test_unknown_agent_is_refused_clearly(self) -> None:
        link = FakeLink()
        self.assertIsInstance(self.relays[2].request_link("nobody", None, link), PendingLink)
        self.turn()
        assert link.closed is not None
        self.assertEqual(link.closed, (CloseCode.OFFLINE, "agent 'nobody' is offline"))
        self.assertEqual(self.relays[2].pending_count, 0)

    def test_agent_registered_at_a_dead_relay_is_refused_clearly(self) -> None:
        r1, _, r3 = self.relays
        r1.register_agent("gpu", None, Control())
        self.turn()
        self.cluster_of(
            r1
        ).stop()  # relay 1 "died": its entry is still in the store, nobody listens
        link = FakeLink()
        r3.request_link("gpu", None, link)
        self.turn()
        assert link.closed is not None
        self.assertEqual(link.closed[0], CloseCode.OFFLINE)
        self.assertIn("does not answer", link.closed[1])

    def test_store_down_refuses_cross_relay_links_but_not_local_ones(self) -> None:
        r1, _, r3 = self.relays
        r1.register_agent("gpu", None, Control())
        r3.register_agent("cpu", None, Control())
        self.turn()
        self.store.down = True
        link = FakeLink()
        r3.request_link("gpu", None, link)
        self.turn()
        assert link.closed is not None
        self.assertEqual(link.closed[0], CloseCode.RELAY_ERROR)
        self.assertIn("shared store is unreachable", link.closed[1])
        status = r3.status()["cluster"]
        self.assertEqual(status["store"], "unreachable")
        self.assertIn("store unreachable", status["problem"])
        # The refresh round says so too, and an agent held here is still served.
        r3.refresh_registry()
        self.turn()
        self.assertEqual(r3.status()["cluster"]["store"], "unreachable")
        local = FakeLink()
        self.assertIsInstance(r3.request_link("cpu", None, local), PendingLink)
        self.assertIsNone(local.closed)
        # Once the store answers again, the next refresh round notices.
        self.store.down = False
        r3.refresh_registry()
        self.turn()
        self.assertEqual(r3.status()["cluster"]["store"], "ok")
        again = FakeLink()
        r3.request_link("gpu", None, again)
        self.turn()
        self.assertIsNone(again.closed)

    def test_newest_connection_wins_everywhere_at_once(self) -> None:
        r1, r2, _ = self.relays
        old, new = Control(), Control()
        r1.register_agent("gpu", None, old)
        self.turn()
        r2.register_agent("gpu", None, new)
        self.turn(10)
        # Relay 1 was told, checked the registry, lost the name: it closes its connection.
        assert old.closed is not None
        self.assertEqual(old.closed[0], CloseCode.REPLACED)
        self.assertIsNone(new.closed)
        r1.agent_gone("gpu", old)  # the close completes; the newer entry stays
        self.turn()
        d = r1.registry.where("gpu")
        self.turn()
        self.assertEqual(self.successResultOf(d), "ws://lb.example/r2")

    def test_store_restart_re_registers_within_one_refresh(self) -> None:
        r1, _, r3 = self.relays
        r1.register_agent("gpu", None, Control())
        self.turn()
        flushed = MemoryStore(self.clock)  # a flushed store: nothing in it
        for relay in self.relays:
            relay.registry = AgentRegistry(flushed, ttl=30)
        r1.refresh_registry()
        self.turn()
        d = r3.registry.where("gpu")
        self.turn()
        self.assertEqual(self.successResultOf(d), "ws://lb.example/r1")

    def test_bus_subscription_is_retried_by_the_refresh(self) -> None:
        relay = self.make_relay(4)
        self.bus.down = True
        self.cluster_of(relay).start()
        self.turn()
        self.assertEqual(relay.status()["cluster"]["bus"], "not listening")
        self.bus.down = False
        relay.refresh_registry()
        self.turn()
        self.assertEqual(relay.status()["cluster"]["bus"], "listening")
        self.assertIn(channel_for("ws://lb.example/r4"), [s.channel for s in self.bus.subs])

    def test_store_health_back_re_registers_at_once(self) -> None:
        r1 = self.relays[0]
        r1.register_agent("gpu", None, Control())
        self.turn()
        self.cluster_of(r1).health_changed(False, "connection refused")
        self.assertEqual(r1.status()["cluster"]["problem"], "connection refused")
        flushed = MemoryStore(self.clock)  # Redis came back empty
        r1.registry = AgentRegistry(flushed, ttl=30)
        self.cluster_of(r1).health_changed(True, None)
        self.turn()
        self.assertEqual(r1.status()["cluster"]["store"], "ok")
        d = r1.registry.where("gpu")
        self.turn()
        self.assertEqual(self.successResultOf(d), "ws://lb.example/r1")
