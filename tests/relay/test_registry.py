"""The relay writes which agents are online, and where, to its registry in the store."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from nbbridge.contract import CloseCode
from nbbridge.relay._auth import Authority
from nbbridge.relay._config import Limits
from nbbridge.relay._core import Relay
from nbbridge.store import AgentRegistry, MemoryStore

from ._harness import RelayTestCase, make_config
from .test_core import FakeControl


class FailingStore(MemoryStore):
    """A store that has lost its server: every write fails."""

    def set(self, key: str, value: bytes, ttl: float | None) -> Deferred[None]:
        return fail(ConnectionError("store unreachable"))

    def expire_if(self, key: str, value: bytes, ttl: float) -> Deferred[bool]:
        return fail(ConnectionError("store unreachable"))

    def expire_if_many(self, items: object, ttl: float) -> Deferred[list[bool]]:
        return fail(ConnectionError("store unreachable"))

    def delete_if(self, key: str, value: bytes) -> Deferred[bool]:
        return fail(ConnectionError("store unreachable"))


class SlowAddStore(MemoryStore):
    """A store whose `add` is applied at once but answered only when the test says."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.gate: Deferred[None] = Deferred()

    def add(self, key: str, value: bytes, ttl: float | None) -> Deferred[bool]:
        answer = super().add(key, value, ttl)
        gate, self.gate = self.gate, Deferred()
        gate.addCallback(lambda _: answer)
        return gate


class RegistryWiringTests(unittest.TestCase):
    """The core on a Clock, its registry in a MemoryStore on the same clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryStore(self.clock)
        self.relay = Relay(
            Authority(None), Limits(), self.clock, registry=AgentRegistry(self.store, ttl=30)
        )
        self.logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            self.logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def where(self, name: str = "gpu", registry: AgentRegistry | None = None) -> str | None:
        d = (registry or self.relay.registry).where(name)
        self.clock.advance(0)
        return self.successResultOf(d)

    def refresh(self) -> None:
        d = self.relay.refresh_registry()
        self.clock.advance(0)
        self.clock.advance(0)  # expire_if, then add
        self.assertIsNone(self.successResultOf(d))

    def test_online_agents_are_registered_where_this_relay_is(self) -> None:
        self.assertIsNone(self.where())
        control = FakeControl()
        self.assertIsNone(self.relay.register_agent("gpu", None, control))
        self.assertEqual(self.where(), self.relay.where)
        self.assertTrue(self.relay.where.startswith("relay:"))
        # A newer connection of the same agent keeps the entry; the old one's end too.
        newer = FakeControl()
        self.relay.register_agent("gpu", None, newer)
        self.relay.agent_gone("gpu", control)
        self.assertEqual(self.where(), self.relay.where)
        self.relay.agent_gone("gpu", newer)
        self.assertIsNone(self.where())

    def test_refused_agent_is_not_registered(self) -> None:
        relay = Relay(Authority(make_config()), Limits(), self.clock)
        relay.register_agent("gpu", "not the token", FakeControl())
        d = relay.registry.where("gpu")
        self.clock.advance(0)
        self.assertIsNone(self.successResultOf(d))

    def test_advertise_url_names_the_relay(self) -> None:
        relay = Relay(Authority(None), Limits(), self.clock, advertise_url="wss://relay-1.example/")
        relay.register_agent("gpu", None, FakeControl())
        self.assertEqual(self.where(registry=relay.registry), "wss://relay-1.example")

    def test_entries_live_while_refreshed_and_expire_without(self) -> None:
        self.relay.register_agent("gpu", None, FakeControl())
        for _ in range(10):  # 100 s: well past the 30 s TTL
            self.clock.advance(self.relay.registry.refresh_interval)
            self.refresh()
        self.assertEqual(self.where(), self.relay.where)
        # The relay stops refreshing (it died): the entry goes by itself.
        self.clock.advance(30)
        self.assertIsNone(self.where())

    def test_refresh_restores_an_entry_the_store_lost(self) -> None:
        self.relay.register_agent("gpu", None, FakeControl())
        self.store.delete("relay:agent:gpu")  # a flushed or restarted store
        self.assertIsNone(self.where())
        self.refresh()
        self.assertEqual(self.where(), self.relay.where)
        self.assertTrue(any("entry of agent gpu written again" in m for m in self.logged))

    def test_agent_gone_during_a_restoring_refresh_leaves_no_entry(self) -> None:
        control = FakeControl()
        self.relay.register_agent("gpu", None, control)
        self.store.delete("relay:agent:gpu")
        d = self.relay.refresh_registry()  # finds the entry gone, will write it again...
        self.relay.agent_gone("gpu", control)  # ...but the agent leaves meanwhile
        self.clock.advance(0)
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertIsNone(self.where(), "a stale entry would send clients to this relay")

    def test_agent_back_here_during_a_restoring_refresh_keeps_its_entry(self) -> None:
        store = SlowAddStore(self.clock)
        relay = Relay(Authority(None), Limits(), self.clock, registry=AgentRegistry(store))
        control = FakeControl()
        relay.register_agent("gpu", None, control)
        store.delete("relay:agent:gpu")
        gate = store.gate
        d = relay.refresh_registry()
        self.clock.advance(0)  # the refresh found the entry gone and wrote it again...
        newer = FakeControl()
        relay.agent_gone("gpu", control)  # ...as the agent's connection here was replaced
        relay.register_agent("gpu", None, newer)
        gate.callback(None)  # now the refresh learns it restored the entry
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(self.where(registry=relay.registry), relay.where)
        self.assertIsNone(newer.closed)

    def test_newer_registration_on_another_relay_wins(self) -> None:
        control = FakeControl()
        self.relay.register_agent("gpu", None, control)
        # The agent's newer connection arrived at another relay sharing the store.
        other = AgentRegistry(self.store, ttl=30)
        other.register("gpu", "wss://relay-2.example")
        self.refresh()
        self.assertEqual(
            control.closed, (CloseCode.REPLACED, "replaced by a newer connection of this agent")
        )
        self.relay.agent_gone("gpu", control)
        self.assertFalse(self.relay.is_online("gpu"))
        self.assertEqual(self.where(), "wss://relay-2.example")

    def test_store_failures_are_logged_and_change_nothing_here(self) -> None:
        relay = Relay(
            Authority(None),
            Limits(),
            self.clock,
            registry=AgentRegistry(FailingStore(self.clock)),
        )
        control = FakeControl()
        self.assertIsNone(relay.register_agent("gpu", None, control))
        self.assertEqual(control.registered, "gpu")
        self.assertTrue(relay.is_online("gpu"))
        d = relay.refresh_registry()
        self.clock.advance(0)
        self.assertIsNone(self.successResultOf(d), "a failed refresh must not stop the timer")
        self.assertIsNone(control.closed)
        relay.agent_gone("gpu", control)
        self.assertFalse(relay.is_online("gpu"))
        for what in ("register", "refresh", "unregister"):
            line = f"registry: could not {what} agent gpu: store unreachable"
            self.assertIn(line, self.logged)


class RegistryEndToEndTests(RelayTestCase):
    """A real relay on loopback, its default in-memory registry."""

    async def test_agent_registered_while_connected(self) -> None:
        await self.start_relay(make_config())
        control = await self.agent()
        self.assertEqual(await self.relay.registry.where("gpu"), self.relay.where)
        control.close()
        await control.lost
        await self.service.connections.when_idle()
        self.assertFalse(self.relay.is_online("gpu"))
        self.assertIsNone(await self.relay.registry.where("gpu"))
