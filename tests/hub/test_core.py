"""Unit: the hub's core with fake connections and a Clock (no sockets, no reactor)."""

from __future__ import annotations

import collections
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from nbbridge.hub._access import Refused
from nbbridge.hub._config import AccessRule, HubConfig
from nbbridge.hub._core import Hub, Member, Message
from nbbridge.hub._routes import BadRoute, HubCloseCode, HubRoute, Role, parse_hub_path
from nbbridge.hub._stats import Counters, snapshot


class FakePeer:
    """Records what the hub sends and whether it closed the connection."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.closed: tuple[int, str] | None = None
        #: called after each send, to model a transport that fills up
        self.after_send: Any = None

    def send(self, message: Message) -> None:
        self.sent.append(message)
        if self.after_send is not None:
            self.after_send()

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class WriteCounting(Counters):
    """Counters that also count how often each of them is written."""

    __slots__ = ("writes",)
    writes: collections.Counter[str]

    def __init__(self) -> None:
        object.__setattr__(self, "writes", collections.Counter())
        super().__init__()
        self.writes.clear()

    def __setattr__(self, name: str, value: Any) -> None:
        self.writes[name] += 1
        super().__setattr__(name, value)


def msg(data: bytes, is_binary: bool = True) -> Message:
    return Message(len(data), is_binary, data)


class HubCoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.hub = Hub(HubConfig(queue_bytes=100, max_message_size=50), self.clock)

    def join(self, path: str, token: str | None = None) -> tuple[Member, FakePeer]:
        peer = FakePeer()
        member = self.hub.join(parse_hub_path(path.split("/")), token, peer, "127.0.0.1:1")
        assert isinstance(member, Member), member
        return member, peer

    def test_two_way_fan_out_without_echo(self) -> None:
        (a, pa), (b, pb), (_, pc) = (self.join("room") for _ in range(3))
        self.hub.publish(a, msg(b"hi", False))
        self.assertEqual([m.frame for m in pb.sent], [b"hi"])
        self.assertEqual([m.frame for m in pc.sent], [b"hi"])
        self.assertEqual(pa.sent, [])
        self.assertEqual((a.counters.messages_in, a.counters.bytes_in), (1, 2))
        self.assertEqual((b.counters.messages_out, b.counters.bytes_out), (1, 2))
        self.assertEqual(a.topic.counters.messages_out, 2)
        self.assertEqual(self.hub.totals.messages_out, 2)
        self.assertEqual(b.counters.last_activity, 1000)

    def test_a_message_to_many_readers_counts_once(self) -> None:
        sender, _ = self.join("in/cam")
        readers = [self.join("out/cam") for _ in range(4)]
        slow, _ = readers[0]
        self.hub.write_full_changed(slow, True)
        topic = sender.topic
        topic.counters = WriteCounting()
        self.hub.totals = WriteCounting()
        self.hub.publish(sender, msg(b"frame"))
        for counters in (topic.counters, self.hub.totals):
            self.assertEqual((counters.messages_in, counters.bytes_in), (1, 5))
            # Every delivery is counted (3 sent now, 1 queued), in one update for the message.
            self.assertEqual((counters.messages_out, counters.bytes_out), (3, 15))
            self.assertEqual(counters.writes["messages_out"], 1)
            self.assertEqual(counters.writes["bytes_out"], 1)
        for reader, peer in readers[1:]:
            self.assertEqual([m.frame for m in peer.sent], [b"frame"])
            self.assertEqual((reader.counters.messages_out, reader.counters.bytes_out), (1, 5))
        self.assertEqual((slow.counters.messages_out, len(slow.queue)), (0, 1))

    def test_a_drain_counts_its_deliveries(self) -> None:
        sender, _ = self.join("in/s")
        reader, pr = self.join("out/s")
        self.hub.write_full_changed(reader, True)
        for size in (10, 20, 30):
            self.hub.publish(sender, msg(b"x" * size))
        self.clock.advance(5)
        self.hub.write_full_changed(reader, False)
        self.assertEqual(len(pr.sent), 3)
        for counters in (reader.counters, reader.topic.counters, self.hub.totals):
            self.assertEqual((counters.messages_out, counters.bytes_out), (3, 60))
            self.assertEqual(counters.last_activity, 1005)
        # Nothing to drain: no delivery, no activity.
        self.clock.advance(5)
        self.hub.write_full_changed(reader, False)
        self.assertEqual(self.hub.totals.last_activity, 1005)

    def test_stream_in_to_out_and_out_ignored(self) -> None:
        reader, pr = self.join("out/cam")
        _, po = self.join("out/cam")
        sender, ps = self.join("in/cam")
        self.hub.publish(sender, msg(b"frame"))
        self.hub.publish(reader, msg(b"noise"))
        self.assertEqual([m.frame for m in pr.sent], [b"frame"])
        self.assertEqual([m.frame for m in po.sent], [b"frame"])
        self.assertEqual(ps.sent, [])
        self.assertEqual((reader.counters.ignored, reader.counters.ignored_bytes), (1, 5))
        self.assertEqual(self.hub.totals.ignored, 1)

    def test_topics_live_while_they_have_members(self) -> None:
        a, _ = self.join("t")
        b, _ = self.join("in/t")
        self.assertEqual(len(self.hub.topics), 2)
        self.hub.leave(a)
        self.hub.leave(a)  # idempotent
        self.assertEqual([t.name for t in self.hub.topics.values()], ["t"])
        self.hub.leave(b)
        self.assertEqual(self.hub.topics, {})
        self.assertEqual(self.hub.member_count, 0)

    def test_full_reader_gets_queue_then_drain_in_order(self) -> None:
        reader, pr = self.join("out/s")
        sender, _ = self.join("in/s")
        self.hub.write_full_changed(reader, True)
        for i in range(3):
            self.hub.publish(sender, msg(bytes([i]) * 20))
        self.assertEqual(pr.sent, [])
        self.assertEqual(reader.queued_bytes, 60)
        self.hub.write_full_changed(reader, False)
        self.assertEqual([m.frame[0] for m in pr.sent], [0, 1, 2])
        self.assertEqual(reader.queued_bytes, 0)
        self.assertEqual(reader.peak_queued_bytes, 60)

    def test_drain_stops_when_the_transport_fills_again(self) -> None:
        reader, pr = self.join("out/s")
        sender, _ = self.join("in/s")
        self.hub.write_full_changed(reader, True)
        for i in range(4):
            self.hub.publish(sender, msg(bytes([i]) * 10))
        pr.after_send = lambda: self.hub.write_full_changed(reader, True)
        self.hub.write_full_changed(reader, False)
        self.assertEqual(len(pr.sent), 1)
        self.assertEqual(reader.queued_bytes, 30)
        # While something is queued, new messages queue behind it (order is kept).
        pr.after_send = None
        self.hub.publish(sender, msg(b"\x09" * 10))
        self.hub.write_full_changed(reader, False)
        self.assertEqual([m.frame[0] for m in pr.sent], [0, 1, 2, 3, 9])

    def test_stream_reader_over_cap_loses_oldest(self) -> None:
        reader, pr = self.join("out/s")
        _, pf = self.join("out/s")
        sender, _ = self.join("in/s")
        self.hub.write_full_changed(reader, True)
        for i in range(8):
            self.hub.publish(sender, msg(bytes([i]) * 30))
        # cap 100: three 30-byte messages fit; five were dropped, oldest first.
        self.assertEqual([m.frame[0] for m in reader.queue], [5, 6, 7])
        self.assertEqual(reader.queued_bytes, 90)
        self.assertEqual((reader.counters.dropped, reader.counters.dropped_bytes), (5, 150))
        self.assertEqual(reader.topic.counters.dropped, 5)
        self.assertEqual(self.hub.totals.dropped, 5)
        self.assertLessEqual(reader.peak_queued_bytes, 100)
        self.assertEqual(len(pf.sent), 8)
        self.assertIsNone(pr.closed)

    def test_two_way_member_over_cap_is_closed(self) -> None:
        slow, ps = self.join("room")
        _, po = self.join("room")
        sender, _ = self.join("room")
        self.hub.write_full_changed(slow, True)
        for _ in range(4):
            self.hub.publish(sender, msg(b"x" * 30))
        self.assertEqual(ps.closed, (HubCloseCode.LIMIT, "too slow: 120 bytes queued (cap 100)"))
        self.assertTrue(slow.left)
        self.assertEqual(slow.queued_bytes, 0)
        self.assertEqual(self.hub.slow_closes, 1)
        self.assertEqual(len(po.sent), 4)
        # Later messages skip it; its connection's close callback is harmless.
        self.hub.publish(sender, msg(b"y"))
        self.hub.leave(slow)
        self.assertEqual(len(po.sent), 5)
        self.assertEqual(self.hub.member_count, 2)

    def test_closing_a_reader_during_fan_out(self) -> None:
        _, p1 = self.join("room")
        second, p2 = self.join("room")
        sender, _ = self.join("room")
        p1.after_send = lambda: self.hub.leave(second)
        self.hub.publish(sender, msg(b"m"))
        self.assertEqual(len(p1.sent), 1)
        self.assertEqual(p2.sent, [])

    def test_refusals(self) -> None:
        peer = FakePeer()
        bad = self.hub.join(BadRoute("empty topic name"), None, peer, "r")
        self.assertEqual(bad, Refused(HubCloseCode.BAD_TOPIC, "empty topic name", "bad_topic"))
        hub = Hub(HubConfig(max_topics=1, max_members=2), self.clock)
        self.assertIsInstance(hub.join(HubRoute(Role.BOTH, "a"), None, peer, "r"), Member)
        refused = hub.join(HubRoute(Role.BOTH, "b"), None, peer, "r")
        assert isinstance(refused, Refused)
        self.assertEqual((refused.code, refused.kind), (HubCloseCode.LIMIT, "limit"))
        self.assertIn("1 topics", refused.reason)
        self.assertIsInstance(hub.join(HubRoute(Role.IN, "a"), None, peer, "r"), Refused)
        self.assertIsInstance(hub.join(HubRoute(Role.BOTH, "a"), None, peer, "r"), Member)
        refused = hub.join(HubRoute(Role.BOTH, "a"), None, peer, "r")
        assert isinstance(refused, Refused)
        self.assertIn("2 connections", refused.reason)
        self.assertEqual(hub.refused["limit"], 3)

    def test_observers(self) -> None:
        events: list[tuple[str, int]] = []
        remove = self.hub.add_observer(lambda e, m: events.append((e, m.id)))
        a, _ = self.join("t")
        self.hub.leave(a)
        remove()
        self.join("t")
        self.assertEqual(events, [("joined", a.id), ("left", a.id)])


class HubLimitTests(unittest.TestCase):
    """The hub-wide queue budget and the member limits: each refusal names its limit."""

    def setUp(self) -> None:
        self.clock = Clock()

    def hub(self, **limits: int) -> Hub:
        return Hub(HubConfig(queue_bytes=100, max_message_size=50, **limits), self.clock)

    def join(self, hub: Hub, path: str, remote: str = "127.0.0.1:1") -> Member:
        member = hub.join(parse_hub_path(path.split("/")), None, FakePeer(), remote)
        assert isinstance(member, Member), member
        return member

    def refused(self, hub: Hub, path: str, remote: str = "127.0.0.1:1") -> Refused:
        refusal = hub.join(parse_hub_path(path.split("/")), None, FakePeer(), remote)
        assert isinstance(refusal, Refused), refusal
        self.assertEqual((refusal.code, refusal.kind), (HubCloseCode.LIMIT, "limit"))
        return refusal

    def test_defaults_are_safe_for_a_public_relay(self) -> None:
        config = HubConfig()
        # What never-reading members can make the hub queue, in all, whatever their number.
        self.assertEqual(config.max_queued_bytes, 64 * 1024 * 1024)
        self.assertEqual((config.queue_bytes, config.max_message_size), (1 << 20, 1 << 20))
        self.assertEqual((config.max_members, config.max_topics), (1000, 1000))
        self.assertEqual(config.max_members_per_topic, 256)
        self.assertEqual(config.max_members_per_address, 64)
        self.assertEqual(config.stats_anonymous, "totals")

    def test_queue_budget_refuses_new_members_until_drained(self) -> None:
        hub = self.hub(max_queued_bytes=160)
        sender = self.join(hub, "in/cam")
        readers = [self.join(hub, "out/cam") for _ in range(2)]
        for reader in readers:
            hub.write_full_changed(reader, True)
        for _ in range(2):
            hub.publish(sender, msg(b"x" * 40))
        self.assertEqual(hub.queued_bytes, 160)
        refusal = self.refused(hub, "out/cam")
        self.assertEqual(
            refusal.reason,
            "hub limit max_queued_bytes reached: 160 bytes queued for slow receivers "
            "(budget 160); try again later",
        )
        self.refused(hub, "other")
        self.assertEqual(hub.refused["limit"], 2)
        hub.write_full_changed(readers[0], False)
        self.assertEqual(hub.queued_bytes, 80)
        self.join(hub, "out/cam")

    def test_queue_budget_bounds_what_never_reading_members_pin(self) -> None:
        # Each reader's cap (100) times the readers (10) is far above the budget (200).
        hub = self.hub(max_queued_bytes=200)
        sender = self.join(hub, "in/cam")
        readers = [self.join(hub, "out/cam") for _ in range(10)]
        room = [self.join(hub, "room") for _ in range(3)]
        for member in readers + room[1:]:
            hub.write_full_changed(member, True)
        for i in range(20):
            hub.publish(sender, msg(bytes([i]) * 30))
            hub.publish(room[0], msg(bytes([i]) * 30))
            self.assertLessEqual(hub.queued_bytes, 200)
            self.assertEqual(hub.queued_bytes, sum(m.queued_bytes for m in hub.members()))
        self.assertGreater(hub.totals.dropped, 0)
        # Two-way members cannot lose messages: past the budget they are closed, saying why.
        closed = [m.peer.closed for m in room[1:]]
        self.assertTrue(all(c is not None and c[0] == HubCloseCode.LIMIT for c in closed), closed)
        self.assertTrue(any("max_queued_bytes 200" in c[1] for c in closed if c), closed)

    def test_member_limits_name_the_limit(self) -> None:
        hub = self.hub(max_members=5, max_members_per_topic=2, max_members_per_address=3)
        self.join(hub, "a", "10.0.0.1:1")
        self.join(hub, "a", "10.0.0.1:2")
        self.assertEqual(
            self.refused(hub, "a", "10.0.0.2:1").reason,
            "hub limit max_members_per_topic reached: at most 2 connections per topic",
        )
        self.join(hub, "b", "10.0.0.1:3")
        self.assertEqual(
            self.refused(hub, "c", "10.0.0.1:4").reason,
            "hub limit max_members_per_address reached: at most 3 connections from one address",
        )
        self.join(hub, "c", "[2001:db8::1]:4")
        self.join(hub, "c", "[2001:db8::1]:5")
        self.assertEqual(
            self.refused(hub, "d", "10.0.0.3:1").reason,
            "hub limit max_members reached: at most 5 connections",
        )
        # Leaving frees the address's slot.
        hub.leave(next(m for m in hub.members() if m.remote == "10.0.0.1:3"))
        self.join(hub, "b", "10.0.0.1:6")

    def test_loopback_is_not_counted_per_address(self) -> None:
        # A reverse proxy on the relay's host connects every client from loopback.
        hub = self.hub(max_members_per_address=2)
        for port in range(5):
            self.join(hub, f"t{port}", f"127.0.0.1:{port}")
            self.join(hub, f"t{port}", f"[::1]:{port}")
        self.join(hub, "t", "192.0.2.1:1")
        self.join(hub, "t", "192.0.2.1:2")
        self.refused(hub, "t", "192.0.2.1:3")


class RateTests(unittest.TestCase):
    def test_rates_over_the_window(self) -> None:
        clock = Clock()
        hub = Hub(HubConfig(rate_window=5.0), clock)
        a, b = FakePeer(), FakePeer()
        sender = hub.join(HubRoute(Role.IN, "s"), None, a, "r")
        reader = hub.join(HubRoute(Role.OUT, "s"), None, b, "r")
        assert isinstance(sender, Member) and isinstance(reader, Member)
        # 10 messages of 100 bytes a second for 10 seconds, sampled each second.
        for _ in range(10):
            for _ in range(10):
                hub.publish(sender, Message(100, True, b""))
            clock.advance(1)
            hub.sample()
        self.assertEqual(
            sender.counters.rates(clock.seconds()),
            {"messages_in": 10.0, "bytes_in": 1000.0, "messages_out": 0.0, "bytes_out": 0.0},
        )
        self.assertEqual(reader.counters.rates(clock.seconds())["messages_out"], 10.0)
        self.assertEqual(hub.totals.rates(clock.seconds())["bytes_out"], 1000.0)
        # Quiet for the whole window: rates fall to zero.
        for _ in range(6):
            clock.advance(1)
            hub.sample()
        self.assertEqual(reader.topic.counters.rates(clock.seconds())["messages_in"], 0.0)

    def test_snapshot_document(self) -> None:
        clock = Clock()
        clock.advance(50)
        hub = Hub(HubConfig(), clock)
        member = hub.join(HubRoute(Role.BOTH, "lab/x"), None, FakePeer(), "127.0.0.1:9")
        assert isinstance(member, Member)
        hub.publish(member, Message(3, False, b"abc"))
        doc = snapshot(hub, {"agents_online": 1})
        self.assertEqual(doc["type"], "nbbridge-hub-stats")
        self.assertEqual(doc["time"], 50)
        self.assertEqual(doc["tunnel"], {"agents_online": 1})
        [topic] = doc["topics"]
        self.assertEqual((topic["name"], topic["kind"], topic["members"]), ("lab/x", "both", 1))
        [conn] = topic["connections"]
        self.assertEqual(conn["route"], "/hub/lab/x")
        self.assertEqual(conn["remote"], "127.0.0.1:9")
        self.assertEqual(conn["messages_in"], 1)
        self.assertEqual(conn["since"], 50)


class AccessTests(unittest.TestCase):
    def setUp(self) -> None:
        import hashlib

        def h(token: str) -> bytes:
            return hashlib.sha256(token.encode()).digest()

        self.config = HubConfig(
            tokens={"cam": h("cam-token"), "viewer": h("viewer-token")},
            access=(
                AccessRule(("lab/*",), send=frozenset({"cam"}), read=frozenset({"viewer", "cam"})),
                AccessRule(("public-*",), send=frozenset({"*"})),
            ),
        )
        self.hub = Hub(self.config, Clock())

    def check(self, route: HubRoute, token: str | None) -> Refused | Member:
        return self.hub.join(route, token, FakePeer(), "r")

    def test_rules(self) -> None:
        cases = [
            (HubRoute(Role.IN, "lab/a"), None, HubCloseCode.BAD_TOKEN),
            (HubRoute(Role.IN, "lab/a"), "wrong", HubCloseCode.BAD_TOKEN),
            (HubRoute(Role.IN, "lab/a"), "viewer-token", HubCloseCode.NOT_PERMITTED),
            (HubRoute(Role.IN, "lab/a"), "cam-token", None),
            (HubRoute(Role.OUT, "lab/a"), "viewer-token", None),
            (HubRoute(Role.OUT, "lab/a"), None, HubCloseCode.BAD_TOKEN),
            (HubRoute(Role.BOTH, "lab/a"), "viewer-token", HubCloseCode.NOT_PERMITTED),
            (HubRoute(Role.BOTH, "lab/a"), "cam-token", None),
            (HubRoute(Role.BOTH, "lab"), None, None),
            (HubRoute(Role.IN, "public-x"), "viewer-token", None),
            (HubRoute(Role.IN, "public-x"), None, HubCloseCode.BAD_TOKEN),
            (HubRoute(Role.OUT, "public-x"), None, None),
            (HubRoute(Role.BOTH, "elsewhere"), "anything", None),
        ]
        for route, token, expected in cases:
            result = self.check(route, token)
            if expected is None:
                self.assertIsInstance(result, Member, (route, token, result))
            else:
                assert isinstance(result, Refused), (route, token, result)
                self.assertEqual(result.code, expected, (route, token))
                if token is not None:
                    self.assertNotIn(token, result.reason)

    def test_member_records_token_name(self) -> None:
        member = self.check(HubRoute(Role.IN, "lab/a"), "cam-token")
        assert isinstance(member, Member)
        self.assertEqual(member.token_name, "cam")
