"""The store test suite: what every `Store` must do, written once for every implementation.

Bind it to an implementation by subclassing `StoreSuite` together with `unittest.TestCase`
and defining `make_store`, `advance` and (if the store cannot stop time) `ttl` and `margin`:

* `tests/store/test_memory.py` binds `MemoryStore` on a `Clock`: `advance` steps the clock,
  so TTL checks land a thousandth of a TTL either side of the boundary;
* a Redis store (issue 13) binds a real `redis-server`: `advance` waits real time, so it
  picks a short `ttl` and a wide `margin` (say 1 s and 0.2; the tests need margin <= 0.25).

Every test is an `async def` that awaits each answer through `settle`, since an answer may
arrive on a later turn (the memory store's do, as Redis's must). Nothing here may depend on
the implementation beyond those four names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import attrs
from twisted.internet.defer import Deferred

from nbbridge.store import (
    AgentRegistry,
    ExpiringRecords,
    RecordError,
    Refresh,
    ReplayMemory,
    Store,
)

if TYPE_CHECKING:
    from twisted.trial.unittest import TestCase

    _Base = TestCase
else:
    _Base = object

T = TypeVar("T")


@attrs.frozen
class Session:
    """A record as datalab might keep one."""

    user: str
    kernel: str | None = None
    port: int = 0
    tags: list[str] = attrs.field(factory=list)


@attrs.frozen
class Nested:
    inner: Session


class StoreSuite(_Base):
    """Mixin of tests for any `Store`; see the module docstring for how to bind it."""

    #: the TTL the tests use (seconds)
    ttl: float = 10.0
    #: how far before and after a TTL's end the tests look, as a fraction of the TTL (<= 0.25)
    margin: float = 0.001

    def make_store(self) -> Store:
        """A fresh, empty store."""
        raise NotImplementedError

    async def advance(self, seconds: float) -> None:
        """Let SECONDS pass for the store."""
        raise NotImplementedError

    async def settle(self, d: Deferred[T]) -> T:
        """D's result, once it has arrived."""
        return await d

    def setUp(self) -> None:
        super().setUp()
        self.store = self.make_store()

    async def just_before_end(self, ttl: float | None = None) -> None:
        """Let time pass until just before a TTL (set now) ends."""
        await self.advance((ttl or self.ttl) * (1 - self.margin))

    async def across_end(self, ttl: float | None = None) -> None:
        """From `just_before_end`, let time pass until just after the TTL ends."""
        await self.advance((ttl or self.ttl) * 2 * self.margin)

    # -- get / set ---------------------------------------------------------------------------

    async def test_absent_key_reads_none(self) -> None:
        self.assertIsNone(await self.settle(self.store.get("nothing:here")))

    async def test_set_then_get(self) -> None:
        await self.settle(self.store.set("k", b"v", None))
        self.assertEqual(await self.settle(self.store.get("k")), b"v")

    async def test_values_are_any_bytes_and_keys_any_text(self) -> None:
        value = bytes(range(256)) + b"\x00"
        await self.settle(self.store.set("agent:ünï/cödé 🙂", value, self.ttl))
        self.assertEqual(await self.settle(self.store.get("agent:ünï/cödé 🙂")), value)
        await self.settle(self.store.set("empty", b"", None))
        self.assertEqual(await self.settle(self.store.get("empty")), b"")

    async def test_key_without_ttl_never_expires(self) -> None:
        await self.settle(self.store.set("k", b"v", None))
        await self.advance(self.ttl * 3)
        self.assertEqual(await self.settle(self.store.get("k")), b"v")

    async def test_key_expires_when_its_ttl_ends(self) -> None:
        await self.settle(self.store.set("k", b"v", self.ttl))
        await self.just_before_end()
        self.assertEqual(await self.settle(self.store.get("k")), b"v")
        await self.across_end()
        self.assertIsNone(await self.settle(self.store.get("k")))

    async def test_set_replaces_value_and_ttl(self) -> None:
        await self.settle(self.store.set("k", b"old", self.ttl))
        await self.settle(self.store.set("k", b"new", None))
        await self.advance(self.ttl * 2)
        self.assertEqual(await self.settle(self.store.get("k")), b"new")
        await self.settle(self.store.set("k", b"newer", self.ttl))
        await self.just_before_end()
        await self.across_end()
        self.assertIsNone(await self.settle(self.store.get("k")))

    # -- add ---------------------------------------------------------------------------------

    async def test_add_only_into_an_empty_slot(self) -> None:
        self.assertTrue(await self.settle(self.store.add("k", b"first", self.ttl)))
        self.assertFalse(await self.settle(self.store.add("k", b"second", None)))
        self.assertEqual(await self.settle(self.store.get("k")), b"first")

    async def test_add_after_expiry_succeeds(self) -> None:
        self.assertTrue(await self.settle(self.store.add("k", b"first", self.ttl)))
        await self.just_before_end()
        self.assertFalse(await self.settle(self.store.add("k", b"early", self.ttl)))
        await self.across_end()
        self.assertTrue(await self.settle(self.store.add("k", b"later", self.ttl)))
        self.assertEqual(await self.settle(self.store.get("k")), b"later")

    async def test_racing_adds_in_one_turn_one_wins(self) -> None:
        racers = [self.store.add("nonce", str(i).encode(), self.ttl) for i in range(5)]
        results = [await self.settle(d) for d in racers]
        self.assertEqual(results, [True, False, False, False, False])
        self.assertEqual(await self.settle(self.store.get("nonce")), b"0")

    # -- take --------------------------------------------------------------------------------

    async def test_take_is_get_and_delete(self) -> None:
        await self.settle(self.store.set("k", b"v", self.ttl))
        self.assertEqual(await self.settle(self.store.take("k")), b"v")
        self.assertIsNone(await self.settle(self.store.take("k")))
        self.assertIsNone(await self.settle(self.store.get("k")))

    async def test_racing_takes_in_one_turn_one_gets_it(self) -> None:
        await self.settle(self.store.set("once", b"v", self.ttl))
        racers = [self.store.take("once") for _ in range(5)]
        results = [await self.settle(d) for d in racers]
        self.assertEqual(results, [b"v", None, None, None, None])

    async def test_expired_key_cannot_be_taken(self) -> None:
        await self.settle(self.store.set("k", b"v", self.ttl))
        await self.just_before_end()
        await self.across_end()
        self.assertIsNone(await self.settle(self.store.take("k")))

    # -- delete / delete_if ------------------------------------------------------------------

    async def test_delete_says_whether_the_key_was_there(self) -> None:
        await self.settle(self.store.set("k", b"v", None))
        self.assertTrue(await self.settle(self.store.delete("k")))
        self.assertFalse(await self.settle(self.store.delete("k")))
        self.assertIsNone(await self.settle(self.store.get("k")))

    async def test_delete_of_expired_key_finds_nothing(self) -> None:
        await self.settle(self.store.set("k", b"v", self.ttl))
        await self.just_before_end()
        await self.across_end()
        self.assertFalse(await self.settle(self.store.delete("k")))

    async def test_delete_if_removes_only_the_expected_value(self) -> None:
        await self.settle(self.store.set("k", b"mine", None))
        self.assertFalse(await self.settle(self.store.delete_if("k", b"yours")))
        self.assertEqual(await self.settle(self.store.get("k")), b"mine")
        self.assertTrue(await self.settle(self.store.delete_if("k", b"mine")))
        self.assertIsNone(await self.settle(self.store.get("k")))
        self.assertFalse(await self.settle(self.store.delete_if("k", b"mine")))

    async def test_delete_if_and_a_replacing_set_in_one_turn(self) -> None:
        # Operations issued in one turn apply in order: the set lands after the delete.
        await self.settle(self.store.set("k", b"old", None))
        deleted = self.store.delete_if("k", b"old")
        replaced = self.store.set("k", b"new", None)
        stale = self.store.delete_if("k", b"old")
        self.assertTrue(await self.settle(deleted))
        await self.settle(replaced)
        self.assertFalse(await self.settle(stale))
        self.assertEqual(await self.settle(self.store.get("k")), b"new")

    # -- expire / expire_if ------------------------------------------------------------------

    async def test_expire_refreshes_the_ttl(self) -> None:
        await self.settle(self.store.set("k", b"v", self.ttl))
        await self.advance(self.ttl * 0.7)
        self.assertTrue(await self.settle(self.store.expire("k", self.ttl)))
        await self.advance(self.ttl * (0.3 + self.margin))  # past the first TTL's end
        self.assertEqual(await self.settle(self.store.get("k")), b"v")
        await self.advance(self.ttl * (0.7 - 2 * self.margin))  # just before the second's
        self.assertEqual(await self.settle(self.store.get("k")), b"v")
        await self.across_end()
        self.assertIsNone(await self.settle(self.store.get("k")))

    async def test_expire_can_shorten_and_gives_a_ttl_to_a_lasting_key(self) -> None:
        await self.settle(self.store.set("k", b"v", None))
        self.assertTrue(await self.settle(self.store.expire("k", self.ttl)))
        await self.just_before_end()
        self.assertEqual(await self.settle(self.store.get("k")), b"v")
        await self.across_end()
        self.assertIsNone(await self.settle(self.store.get("k")))

    async def test_expire_of_absent_key_creates_nothing(self) -> None:
        self.assertFalse(await self.settle(self.store.expire("k", self.ttl)))
        self.assertIsNone(await self.settle(self.store.get("k")))
        await self.settle(self.store.set("gone", b"v", self.ttl))
        await self.just_before_end()
        await self.across_end()
        self.assertFalse(await self.settle(self.store.expire("gone", self.ttl)))
        self.assertIsNone(await self.settle(self.store.get("gone")))

    async def test_expire_if_refreshes_only_the_expected_value(self) -> None:
        await self.settle(self.store.set("k", b"mine", self.ttl))
        await self.advance(self.ttl * 0.7)
        self.assertFalse(await self.settle(self.store.expire_if("k", b"yours", self.ttl)))
        await self.advance(self.ttl * (0.3 - self.margin))
        self.assertEqual(await self.settle(self.store.get("k")), b"mine")
        await self.across_end()
        self.assertIsNone(await self.settle(self.store.get("k")), "refreshed by a non-holder")

        await self.settle(self.store.set("k", b"mine", self.ttl))
        await self.advance(self.ttl * 0.7)
        self.assertTrue(await self.settle(self.store.expire_if("k", b"mine", self.ttl)))
        await self.advance(self.ttl * (0.3 + self.margin))  # past the first TTL's end
        self.assertEqual(await self.settle(self.store.get("k")), b"mine")
        self.assertFalse(await self.settle(self.store.expire_if("absent", b"mine", self.ttl)))
        self.assertIsNone(await self.settle(self.store.get("absent")))

    async def test_expire_if_many_refreshes_the_held_keys_only(self) -> None:
        await self.settle(self.store.set("a", b"mine", self.ttl))
        await self.settle(self.store.set("b", b"yours", self.ttl))
        await self.settle(self.store.set("c", b"mine", self.ttl))
        await self.advance(self.ttl * 0.7)
        items = [("a", b"mine"), ("b", b"mine"), ("absent", b"mine"), ("c", b"mine")]
        held = await self.settle(self.store.expire_if_many(items, self.ttl))
        self.assertEqual(held, [True, False, False, True])
        self.assertEqual(await self.settle(self.store.expire_if_many([], self.ttl)), [])
        await self.advance(self.ttl * (0.3 + self.margin))  # past the first TTL's end
        self.assertEqual(await self.settle(self.store.get("a")), b"mine")
        self.assertEqual(await self.settle(self.store.get("c")), b"mine")
        self.assertIsNone(await self.settle(self.store.get("b")), "refreshed by a non-holder")
        self.assertIsNone(await self.settle(self.store.get("absent")))
        self.assertRaises(ValueError, self.store.expire_if_many, [("a", b"mine")], 0)
        self.assertRaises(TypeError, self.store.expire_if_many, [("a", "mine")], self.ttl)

    async def test_expire_if_many_over_a_thousand_keys(self) -> None:
        # (Redis runs them in batches: the answers must come back whole and in order.)
        for i in range(0, 2500, 2):
            await self.settle(self.store.set(f"k:{i}", b"v", None))
        items = [(f"k:{i}", b"v") for i in range(2500)]
        held = await self.settle(self.store.expire_if_many(items, self.ttl * 10))
        self.assertEqual(held, [i % 2 == 0 for i in range(2500)])

    # -- scan --------------------------------------------------------------------------------

    async def test_scan_lists_live_keys_under_a_prefix(self) -> None:
        await self.settle(self.store.set("a:2", b"", None))
        await self.settle(self.store.set("a:1", b"", self.ttl * 3))
        await self.settle(self.store.set("a:short", b"", self.ttl))
        await self.settle(self.store.set("b:1", b"", None))
        await self.settle(self.store.set("a", b"", None))
        self.assertEqual(await self.settle(self.store.scan("a:")), ["a:1", "a:2", "a:short"])
        await self.just_before_end()
        await self.across_end()
        self.assertEqual(await self.settle(self.store.scan("a:")), ["a:1", "a:2"])
        # Glob characters in a prefix are plain text (Redis must escape them in MATCH).
        await self.settle(self.store.set("q*[x]?:1", b"", None))
        await self.settle(self.store.set("qz[x]?:1", b"", None))
        self.assertEqual(await self.settle(self.store.scan("q*[x]?:")), ["q*[x]?:1"])

    # -- bad arguments -----------------------------------------------------------------------

    async def test_bad_arguments_raise_at_once_and_store_nothing(self) -> None:
        store = self.store
        self.assertRaises(TypeError, store.set, "k", "text", None)
        self.assertRaises(TypeError, store.add, "k", None, None)
        self.assertRaises(TypeError, store.set, b"k", b"v", None)
        self.assertRaises(ValueError, store.set, "", b"v", None)
        for ttl in (0, -1.0, float("nan"), float("inf")):
            self.assertRaises(ValueError, store.set, "k", b"v", ttl)
            self.assertRaises(ValueError, store.add, "k", b"v", ttl)
            self.assertRaises(ValueError, store.expire, "k", ttl)
        self.assertRaises(TypeError, store.set, "k", b"v", "10")
        self.assertRaises(TypeError, store.delete_if, "k", "v")
        self.assertIsNone(await self.settle(store.get("k")))
        await self.settle(store.set("k", b"v", None))
        self.assertRaises(ValueError, store.set, "k", b"w", -1)
        self.assertRaises(ValueError, store.expire_if, "k", b"v", 0)
        self.assertEqual(await self.settle(store.get("k")), b"v")
        await self.advance(self.ttl * 3)
        self.assertEqual(await self.settle(store.get("k")), b"v", "a refused expire applied")

    # -- AgentRegistry -----------------------------------------------------------------------

    def registry(self) -> AgentRegistry:
        return AgentRegistry(self.store, ttl=self.ttl)

    async def test_registry_says_where_an_agent_is(self) -> None:
        registry = self.registry()
        self.assertIsNone(await self.settle(registry.where("gpu")))
        await self.settle(registry.register("gpu", "wss://relay-1.example/"))
        self.assertEqual(await self.settle(registry.where("gpu")), "wss://relay-1.example/")
        self.assertEqual(await self.settle(registry.names()), ["gpu"])

    async def test_registry_newest_registration_wins(self) -> None:
        registry = self.registry()
        await self.settle(registry.register("gpu", "relay-1"))
        await self.settle(registry.register("gpu", "relay-2"))
        self.assertEqual(await self.settle(registry.where("gpu")), "relay-2")
        # The older holder's connection ends: its removal leaves the newer entry alone...
        self.assertFalse(await self.settle(registry.unregister("gpu", "relay-1")))
        self.assertEqual(await self.settle(registry.where("gpu")), "relay-2")
        # ...and its refresh learns that it lost the name, without taking it back.
        self.assertEqual(await self.settle(registry.refresh("gpu", "relay-1")), Refresh.LOST)
        self.assertEqual(await self.settle(registry.where("gpu")), "relay-2")
        self.assertTrue(await self.settle(registry.unregister("gpu", "relay-2")))
        self.assertIsNone(await self.settle(registry.where("gpu")))

    async def test_registry_entry_lives_while_refreshed_and_expires_after(self) -> None:
        registry = self.registry()
        await self.settle(registry.register("gpu", "relay-1"))
        for _ in range(4):  # well past one TTL in all
            await self.advance(registry.refresh_interval)
            refreshed = await self.settle(registry.refresh("gpu", "relay-1"))
            self.assertEqual(refreshed, Refresh.HELD)
        self.assertEqual(await self.settle(registry.where("gpu")), "relay-1")
        # The holder dies: no more refreshes, and the entry goes away on its own.
        await self.just_before_end()
        self.assertEqual(await self.settle(registry.where("gpu")), "relay-1")
        await self.across_end()
        self.assertIsNone(await self.settle(registry.where("gpu")))
        self.assertEqual(await self.settle(registry.names()), [])

    async def test_registry_refresh_restores_a_vanished_entry(self) -> None:
        # E.g. Redis was restarted or flushed: the holder writes its entry again.
        registry = self.registry()
        await self.settle(registry.register("gpu", "relay-1"))
        await self.settle(self.store.delete("relay:agent:gpu"))
        self.assertEqual(await self.settle(registry.refresh("gpu", "relay-1")), Refresh.RESTORED)
        self.assertEqual(await self.settle(registry.where("gpu")), "relay-1")
        await self.just_before_end()
        self.assertEqual(await self.settle(registry.where("gpu")), "relay-1", "restored TTL")

    async def test_registry_refresh_many_is_refresh_for_each(self) -> None:
        registry = self.registry()
        await self.settle(registry.register("held", "relay-1"))
        await self.settle(registry.register("vanished", "relay-1"))
        await self.settle(registry.register("lost", "relay-1"))
        await self.settle(registry.register("lost", "relay-2"))
        await self.settle(self.store.delete("relay:agent:vanished"))
        results = await self.settle(
            registry.refresh_many(["held", "vanished", "lost", "new"], "relay-1")
        )
        self.assertEqual(results, [Refresh.HELD, Refresh.RESTORED, Refresh.LOST, Refresh.RESTORED])
        self.assertEqual(await self.settle(registry.where("lost")), "relay-2")
        self.assertEqual(await self.settle(registry.where("vanished")), "relay-1")
        self.assertEqual(await self.settle(registry.refresh_many([], "relay-1")), [])

    async def test_registry_refuses_empty_names(self) -> None:
        registry = self.registry()
        self.assertRaises(ValueError, registry.register, "", "relay-1")
        self.assertRaises(ValueError, registry.register, "gpu", "")
        self.assertEqual(await self.settle(self.store.scan("")), [])

    # -- ExpiringRecords ---------------------------------------------------------------------

    def sessions(self) -> ExpiringRecords[Session]:
        return ExpiringRecords(self.store, "datalab:session:", Session)

    async def test_records_round_trip_and_expire(self) -> None:
        sessions = self.sessions()
        record = Session("ada", kernel="k-1", port=8888, tags=["gpu", "é"])
        await self.settle(sessions.put("s1", record, self.ttl))
        self.assertEqual(await self.settle(sessions.get("s1")), record)
        self.assertEqual(await self.settle(self.store.scan("datalab:")), ["datalab:session:s1"])
        await self.just_before_end()
        self.assertTrue(await self.settle(sessions.refresh("s1", self.ttl)))
        await self.just_before_end()
        self.assertEqual(await self.settle(sessions.get("s1")), record)
        await self.across_end()
        self.assertIsNone(await self.settle(sessions.get("s1")))
        self.assertFalse(await self.settle(sessions.refresh("s1", self.ttl)))

    async def test_one_time_record_is_taken_once(self) -> None:
        nonces = self.sessions()
        record = Session("ada")
        self.assertTrue(await self.settle(nonces.add("n1", record, self.ttl)))
        self.assertFalse(await self.settle(nonces.add("n1", Session("eve"), self.ttl)))
        racers = [nonces.take("n1") for _ in range(3)]
        self.assertEqual([await self.settle(d) for d in racers], [record, None, None])
        self.assertFalse(await self.settle(nonces.delete("n1")))

    async def test_unreadable_record_is_a_clear_error(self) -> None:
        sessions = self.sessions()
        await self.settle(self.store.set("datalab:session:bad", b"\xff not json", None))
        await self.settle(self.store.set("datalab:session:odd", b'{"name": "x"}', None))
        await self.settle(self.store.set("datalab:session:list", b"[1]", None))
        for record_id in ("bad", "odd", "list"):
            with self.assertRaises(RecordError) as caught:
                await self.settle(sessions.get(record_id))
            self.assertIn("is not a Session", str(caught.exception))
            # A record id may be a secret (a nonce): never in an error message.
            self.assertNotIn("session:" + record_id, str(caught.exception))

    async def test_records_refuse_what_json_would_change(self) -> None:
        sessions = self.sessions()
        self.assertRaises(TypeError, sessions.put, "s", Session("ada", tags=("x",)), None)
        self.assertRaises(TypeError, sessions.put, "s", Session("ada", kernel=b"k"), None)
        self.assertRaises(TypeError, sessions.put, "s", "ada", None)
        nested = ExpiringRecords(self.store, "n:", Nested)
        self.assertRaises(TypeError, nested.put, "s", Nested(Session("ada")), None)
        self.assertRaises(TypeError, ExpiringRecords, self.store, "x:", dict)
        self.assertEqual(await self.settle(self.store.scan("")), [])

    # -- ReplayMemory ------------------------------------------------------------------------

    async def test_replay_memory_refuses_repeats_until_the_ttl_ends(self) -> None:
        seen = ReplayMemory(self.store, "gateway:replay:")
        self.assertTrue(await self.settle(seen.first_time("msg-1", self.ttl)))
        self.assertFalse(await self.settle(seen.first_time("msg-1", self.ttl)))
        self.assertTrue(await self.settle(seen.first_time("msg-2", self.ttl)))
        racers = [seen.first_time("msg-3", self.ttl) for _ in range(3)]
        self.assertEqual([await self.settle(d) for d in racers], [True, False, False])
        await self.just_before_end()
        self.assertFalse(await self.settle(seen.first_time("msg-1", self.ttl)))
        await self.across_end()
        self.assertTrue(await self.settle(seen.first_time("msg-1", self.ttl)))
        self.assertRaises(ValueError, seen.first_time, "msg-4", 0)
