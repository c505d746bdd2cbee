"""The bus test suite: what every `Bus` must do, written once for every implementation.

Bind it by subclassing `BusSuite` with `unittest.TestCase` and defining `make_buses` (an
async set-up that returns two buses sharing one network, as two relays on one Redis would).
`tests/store/test_bus.py` binds `MemoryBus`, `tests/store/test_redis.py` binds `RedisBus`
on a real redis-server. Both run on the real reactor: every wait is for a message to arrive,
and "nothing arrived" is checked with a barrier: a marker published after the message in
question by the same bus arrives after it, so once the marker is in, the message would be too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred

from nbbridge.store import Bus

if TYPE_CHECKING:
    from twisted.trial.unittest import TestCase

    _Base = TestCase
else:
    _Base = object


class Inbox:
    """A receiver that keeps what it gets and tells a waiter when enough has arrived."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self._waiting: list[tuple[int, Deferred[list[bytes]]]] = []

    def __call__(self, message: bytes) -> None:
        self.messages.append(message)
        ready = [(n, d) for n, d in self._waiting if len(self.messages) >= n]
        self._waiting = [(n, d) for n, d in self._waiting if len(self.messages) < n]
        for _, d in ready:
            d.callback(list(self.messages))

    def until(self, count: int) -> Deferred[list[bytes]]:
        """The messages, once COUNT have arrived."""
        d: Deferred[list[bytes]] = Deferred()
        if len(self.messages) >= count:
            d.callback(list(self.messages))
        else:
            self._waiting.append((count, d))
        return d


class BusSuite(_Base):
    """Mixin of tests for any `Bus`; see the module docstring for how to bind it."""

    async def make_buses(self) -> tuple[Bus, Bus]:
        """Two fresh buses on one network (two relays sharing a store)."""
        raise NotImplementedError

    async def buses(self) -> tuple[Bus, Bus]:
        return await self.make_buses()

    async def barrier(self, publisher: Bus, listener: Bus) -> None:
        """Wait until everything PUBLISHER sent before now has reached LISTENER's receivers."""
        marker = Inbox()
        sub = await listener.subscribe("test:barrier", marker)
        await publisher.publish("test:barrier", b"marker")
        await marker.until(1)
        await sub.cancel()

    async def test_a_subscriber_gets_what_is_published_after_it_subscribed(self) -> None:
        a, b = await self.buses()
        inbox = Inbox()
        sub = await a.subscribe("topic:t", inbox)
        self.assertEqual(sub.channel, "topic:t")
        self.assertEqual(await a.publish("topic:t", b"from a"), 1)
        self.assertEqual(await b.publish("topic:t", b"from b"), 1)
        self.assertEqual(sorted(await inbox.until(2)), [b"from a", b"from b"])

    async def test_publish_counts_the_buses_reached(self) -> None:
        a, b = await self.buses()
        self.assertEqual(await a.publish("nobody", b"x"), 0)
        one, two, three = Inbox(), Inbox(), Inbox()
        await a.subscribe("c", one)
        await a.subscribe("c", two)  # a second receiver on the same bus: still one bus
        self.assertEqual(await b.publish("c", b"1"), 1)
        await b.subscribe("c", three)
        self.assertEqual(await b.publish("c", b"2"), 2)
        self.assertEqual(await one.until(2), [b"1", b"2"])
        self.assertEqual(await two.until(2), [b"1", b"2"])
        self.assertEqual(await three.until(1), [b"2"])

    async def test_delivery_is_never_inside_publish(self) -> None:
        a, _ = await self.buses()
        inbox = Inbox()
        await a.subscribe("c", inbox)
        d = a.publish("c", b"x")
        self.assertEqual(inbox.messages, [])
        await d
        await inbox.until(1)

    async def test_order_is_kept_per_publisher_and_channel(self) -> None:
        a, b = await self.buses()
        inbox = Inbox()
        await b.subscribe("c", inbox)
        sent = [str(i).encode() for i in range(200)]
        for message in sent:
            a.publish("c", message)
        self.assertEqual(await inbox.until(len(sent)), sent)

    async def test_any_bytes_and_any_channel_name(self) -> None:
        a, b = await self.buses()
        inbox = Inbox()
        await b.subscribe("topic:ünï cödé/🙂*?[x]", inbox)
        payload = bytes(range(256)) * 40 + b"\r\n"
        await a.publish("topic:ünï cödé/🙂*?[x]", payload)
        await a.publish("topic:ünï cödé/🙂*?[x]", b"")
        self.assertEqual(await inbox.until(2), [payload, b""])

    async def test_channels_are_separate(self) -> None:
        a, b = await self.buses()
        t1, t2 = Inbox(), Inbox()
        await b.subscribe("t1", t1)
        await b.subscribe("t2", t2)
        await a.publish("t1", b"one")
        await self.barrier(a, b)
        self.assertEqual(t1.messages, [b"one"])
        self.assertEqual(t2.messages, [])

    async def test_cancel_stops_only_that_receiver(self) -> None:
        a, b = await self.buses()
        kept, gone = Inbox(), Inbox()
        await b.subscribe("c", kept)
        sub = await b.subscribe("c", gone)
        await sub.cancel()
        await sub.cancel()  # twice is fine
        self.assertEqual(await a.publish("c", b"x"), 1)
        await self.barrier(a, b)
        self.assertEqual(kept.messages, [b"x"])
        self.assertEqual(gone.messages, [])

    async def test_after_the_last_cancel_nobody_is_reached(self) -> None:
        a, b = await self.buses()
        inbox = Inbox()
        first = await b.subscribe("c", inbox)
        second = await b.subscribe("c", inbox)
        await first.cancel()
        await second.cancel()
        self.assertEqual(await a.publish("c", b"x"), 0)
        await self.barrier(a, b)
        self.assertEqual(inbox.messages, [])
        # Subscribing again works as the first time.
        await b.subscribe("c", inbox)
        self.assertEqual(await a.publish("c", b"y"), 1)
        self.assertEqual(await inbox.until(1), [b"y"])

    async def test_resubscribe_in_one_turn_after_cancel(self) -> None:
        a, b = await self.buses()
        inbox = Inbox()
        old = await b.subscribe("c", inbox)
        cancelled = old.cancel()
        again = b.subscribe("c", inbox)
        await cancelled
        await again
        self.assertEqual(await a.publish("c", b"x"), 1)
        self.assertEqual(await inbox.until(1), [b"x"])

    async def test_a_failing_receiver_does_not_disturb_others(self) -> None:
        a, b = await self.buses()

        def broken(message: bytes) -> None:
            raise RuntimeError("receiver bug")

        inbox = Inbox()
        await b.subscribe("c", broken)
        await b.subscribe("c", inbox)
        await a.publish("c", b"1")
        await a.publish("c", b"2")
        self.assertEqual(await inbox.until(2), [b"1", b"2"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    async def test_bad_arguments_raise_at_once(self) -> None:
        a, _ = await self.buses()
        self.assertRaises(TypeError, a.publish, "c", "text")
        self.assertRaises(TypeError, a.publish, b"c", b"x")
        self.assertRaises(ValueError, a.publish, "", b"x")
        self.assertRaises(ValueError, a.subscribe, "", print)
        self.assertRaises(TypeError, a.subscribe, "c", None)
