"""Unit: the hub's TopicBridge on MemoryBuses and a Clock (two hubs in one process, no sockets)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial import unittest

from nbbridge.hub._cluster import TopicBridge, topic_channel
from nbbridge.hub._config import HubConfig
from nbbridge.hub._core import Hub, Member, Message
from nbbridge.hub._routes import TopicKind, parse_hub_path
from nbbridge.store import MemoryBus, StoreUnavailable, Subscription

from .test_core import FakePeer


def msg(data: bytes) -> Message:
    """A message as the protocol makes one: its frame, and its payload for the bus."""
    return Message(len(data), True, data, data)


def frame(payload: bytes, is_binary: bool) -> Any:
    return (b"B:" if is_binary else b"T:") + payload


class Relay:
    """A hub and its bridge, as one relay has them."""

    def __init__(self, clock: Clock, bus: Any, relay_id: bytes) -> None:
        self.hub = Hub(HubConfig(queue_bytes=100, max_message_size=50), clock)
        self.bridge = TopicBridge(self.hub, bus, frame, clock, relay_id)
        self.bridge.start()

    def join(self, path: str) -> tuple[Member, FakePeer]:
        peer = FakePeer()
        member = self.hub.join(parse_hub_path(path.split("/")), None, peer, "127.0.0.1:1")
        assert isinstance(member, Member), member
        return member, peer


class BridgeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        bus_a = MemoryBus(self.clock)
        self.a = Relay(self.clock, bus_a, b"a" * 16)
        self.b = Relay(self.clock, MemoryBus(self.clock, shared_with=bus_a), b"b" * 16)

    def settle(self) -> None:
        for _ in range(5):
            self.clock.advance(0)

    def test_messages_cross_and_echoes_are_dropped(self) -> None:
        sender, sender_peer = self.a.join("room")
        _, local_peer = self.a.join("room")
        _, far_peer = self.b.join("room")
        self.settle()
        self.a.hub.publish(sender, msg(b"hi"))
        self.settle()
        self.assertEqual([m.frame for m in local_peer.sent], [b"hi"])
        self.assertEqual([m.frame for m in far_peer.sent], [b"B:hi"])
        self.assertEqual(sender_peer.sent, [])
        self.assertEqual((self.a.bridge.published, self.b.bridge.received), (1, 1))
        self.assertEqual(self.a.bridge.received, 0, "its own message came back and was dropped")

    def test_malformed_envelopes_are_dropped_and_logged(self) -> None:
        _, peer = self.b.join("room")
        self.settle()
        channel = topic_channel(TopicKind.BOTH, "room")
        for bad in (b"short", b"x" * 16 + b"\x07payload"):
            self.b.bridge.bus.publish(channel, bad)
        self.settle()
        self.assertEqual(peer.sent, [])
        self.assertEqual(self.b.bridge.received, 0)

    def test_a_topic_left_before_its_subscription_is_made_is_unsubscribed(self) -> None:
        member, _ = self.b.join("out/cam")
        self.assertIn((TopicKind.STREAM, "cam"), self.b.bridge.subscribed())
        self.b.hub.leave(member)  # before the bus answered
        self.settle()
        self.assertEqual(self.b.bridge.subscribed(), set())
        sender, _ = self.a.join("in/cam")
        self.a.hub.publish(sender, msg(b"x"))
        published: list[int] = []
        self.a.bridge.bus.publish("hub:stream:cam", b"a" * 16 + b"\x01x").addCallback(
            published.append
        )
        self.settle()
        self.assertEqual(published, [0], "nobody is subscribed any more")

    def test_a_failed_subscription_is_tried_again_on_the_next_tick(self) -> None:
        bus = FlakyBus(self.clock)
        relay = Relay(self.clock, bus, b"c" * 16)
        relay.join("room")
        self.settle()
        self.assertEqual(relay.bridge.subscribed(), set())
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        bus.failing = False
        relay.bridge.tick()
        self.settle()
        self.assertEqual(relay.bridge.subscribed(), {(TopicKind.BOTH, "room")})

    def test_cluster_figures_add_up_live_relays_and_forget_dead_ones(self) -> None:
        self.a.join("room")
        self.b.join("room")
        self.b.join("out/cam")
        self.settle()
        self.a.bridge.tick()
        self.b.bridge.tick()
        self.settle()
        figures = self.a.bridge.figures()
        self.assertEqual((figures["relays"], figures["totals"]["members"]), (2, 3))
        self.assertEqual(
            [(t["name"], t["members"], t["relays"]) for t in figures["topics"]],
            [("cam", 1, 1), ("room", 2, 2)],
        )
        self.assertEqual(self.a.bridge.figures(full=False)["topics"], [])
        # b stops sending summaries (it died): after three intervals it no longer counts.
        self.clock.advance(3 * self.a.hub.config.stats_interval + 1)
        self.assertEqual(self.a.bridge.figures()["relays"], 1)

    def test_stop_unsubscribes_everything(self) -> None:
        self.b.join("room")
        self.settle()
        self.b.bridge.stop()
        self.settle()
        self.assertEqual(self.b.bridge.subscribed(), set())
        self.assertIsNone(self.b.hub.on_publish)


class FlakyBus(MemoryBus):
    """A bus whose subscriptions fail while `failing` (Redis away)."""

    failing = True

    def subscribe(self, channel: str, receiver: Any) -> Deferred[Subscription]:
        if self.failing:
            return fail(StoreUnavailable("the store (Redis) is not available: test"))
        return super().subscribe(channel, receiver)
