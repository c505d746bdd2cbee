"""Integration: a stalled receiver slows nobody, and what the hub queues for it stays capped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from nbbridge._tuning import BUFFER_SIZE
from nbbridge.hub import HubCloseCode
from nbbridge.hub._core import Member
from nbbridge.hub._protocol import HubMemberProtocol

from ..relay._harness import write_buffered
from ..relay._ws import TestClient
from ._harness import HubTestCase, OverTLS, message, seq_of

SIZE = 64 * 1024
CAP = 1024 * 1024
#: how far the sender may run ahead of the slowest *fast* receiver (keeps their queues short)
WINDOW = 8
#: a relay transport's high-water mark (nbbridge._tuning.BUFFER_SIZE) plus the message that
#: crossed it
TRANSPORT_SLACK = BUFFER_SIZE + SIZE


@implementer(IPushProducer)
class Pump:
    """Sends numbered binary messages, never more than WINDOW ahead of the fast receivers."""

    def __init__(self, client: TestClient, fast: int, on_send: Callable[[], None]) -> None:
        self._client = client
        self._on_send = on_send
        self.sent = 0
        self.cap: int | None = None
        self.paused = False
        self._scheduled = False
        self.received = [0] * fast
        client.tcp.registerProducer(self, True)

    def delivered(self, index: int) -> None:
        self.received[index] += 1
        self.schedule()

    def schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            reactor.callLater(0, self.run)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.schedule()

    def stopProducing(self) -> None:
        self.paused = True

    def run(self) -> None:
        self._scheduled = False
        while (
            not self.paused
            and (self.cap is None or self.sent < self.cap)
            and self.sent - min(self.received) < WINDOW
        ):
            self._client.sendMessage(message(self.sent, SIZE), isBinary=True)
            self.sent += 1
            self._on_send()


class SlowReceiverTests(HubTestCase):
    """Stream readers lose their oldest messages; two-way members are closed; senders go on."""

    def relay_protocol(self, member: Member) -> Any:
        [protocol] = [
            p
            for p in self.service.connections.open_protocols()
            if isinstance(p, HubMemberProtocol) and p.member is member
        ]
        return protocol

    def watch_fast(self, clients: list[TestClient], pump: list[Pump]) -> Deferred[None]:
        """Check each fast receiver gets every message in order; fires when all got the cap."""
        done: Deferred[None] = Deferred()
        finished = [False] * len(clients)

        def handler(index: int) -> Callable[[bytes, bool], None]:
            def got(payload: bytes, is_binary: bool) -> None:
                if done.called:
                    return
                expected = pump[0].received[index]
                if payload != message(expected, SIZE) or not is_binary:
                    done.errback(AssertionError(f"fast receiver {index}: message {expected} wrong"))
                    return
                pump[0].delivered(index)
                cap = pump[0].cap
                if cap is not None and pump[0].received[index] == cap:
                    finished[index] = True
                    if all(finished):
                        done.callback(None)

            return got

        for i, client in enumerate(clients):
            client.on_message = handler(i)
        return done

    async def test_stalled_stream_reader(self) -> None:
        await self.start_hub({"queue_bytes": CAP, "max_message_size": SIZE})
        stalled = await self.join("/hub/out/cam")
        [stalled_member] = self.member("/hub/out/cam")
        fast = [await self.join("/hub/out/cam") for _ in range(2)]
        sender = await self.join("/hub/in/cam")
        [sender_member] = self.member("/hub/in/cam")
        stalled_relay_side = self.relay_protocol(stalled_member)
        sender_relay_side = self.relay_protocol(sender_member)

        stalled.tcp.pauseProducing()
        most_held = 0

        def check_bound() -> None:
            nonlocal most_held
            held = stalled_member.queued_bytes + write_buffered(stalled_relay_side)
            most_held = max(most_held, held)

        pump_box: list[Pump] = []
        all_fast = self.watch_fast(fast, pump_box)
        dropping = self.when("dropped", lambda m: m is stalled_member and m.counters.dropped >= 40)
        pump = Pump(sender, len(fast), check_bound)
        pump_box.append(pump)
        pump.schedule()

        await dropping
        # Enough has been dropped; send 40 more, then stop.
        pump.cap = pump.sent + 40
        pump.schedule()
        await all_fast
        total = pump.cap

        # The fast readers got every message while the stalled one still read nothing.
        self.assertTrue(stalled_member.full)
        self.assertFalse(sender_relay_side.reading_paused)
        self.assertLessEqual(stalled_member.peak_queued_bytes, CAP)
        self.assertLessEqual(most_held, CAP + TRANSPORT_SLACK)
        dropped = stalled_member.counters.dropped
        self.assertGreaterEqual(dropped, 40)
        for member in self.member("/hub/out/cam"):
            if member is not stalled_member:
                self.assertEqual(member.counters.dropped, 0)
                self.assertEqual(member.counters.messages_out, total)

        # The stalled reader reads again: the newest messages, in order, the drops missing.
        seqs: list[int] = []
        last: Deferred[None] = Deferred()

        def got(payload: bytes, is_binary: bool) -> None:
            seqs.append(seq_of(payload))
            if seqs[-1] == total - 1 and not last.called:
                last.callback(None)

        stalled.on_message = got
        stalled.tcp.resumeProducing()
        await last
        self.assertEqual(seqs, sorted(set(seqs)))
        self.assertEqual(len(seqs) + dropped, total)
        self.assertEqual(stalled_member.counters.messages_out, len(seqs))
        self.assertEqual(self.hub.totals.dropped, dropped)
        [topic] = self.hub.topics.values()
        self.assertEqual(topic.counters.dropped, dropped)
        self.assertEqual(topic.counters.dropped_bytes, dropped * SIZE)

    async def test_slow_member_of_a_two_way_topic_is_closed(self) -> None:
        await self.start_hub({"queue_bytes": CAP, "max_message_size": SIZE})
        slow = await self.join("/hub/room")
        [slow_member] = self.member("/hub/room")
        fast = await self.join("/hub/room")
        sender = await self.join("/hub/room")
        sender_member = max(self.member("/hub/room"), key=lambda m: m.id)
        sender_relay_side = self.relay_protocol(sender_member)

        slow.tcp.pauseProducing()
        pump_box: list[Pump] = []
        all_fast = self.watch_fast([fast], pump_box)
        too_slow = self.when("too-slow")
        pump = Pump(sender, 1, lambda: None)
        pump_box.append(pump)
        pump.schedule()

        closed_member = await too_slow
        self.assertIs(closed_member, slow_member)
        self.assertEqual(self.hub.slow_closes, 1)
        pump.cap = pump.sent + 40
        pump.schedule()
        await all_fast
        self.assertFalse(sender_relay_side.reading_paused)
        self.assertEqual(len(self.member("/hub/room")), 2)
        self.assertEqual(len(sender.messages.pending), 0)

        slow.tcp.resumeProducing()
        code, reason = await slow.closed
        self.assertEqual(code, HubCloseCode.LIMIT)
        self.assertRegex(reason, r"^too slow: \d+ bytes queued \(cap 1048576\)$")


class QueueBudgetTests(HubTestCase):
    """Issue 16: readers that never read each pinned their own queue, without a hub-wide bound."""

    async def test_never_reading_readers_fill_the_budget_then_joins_are_refused(self) -> None:
        budget = 4 * 2 * SIZE
        await self.start_hub(
            {"queue_bytes": 2 * SIZE, "max_message_size": SIZE, "max_queued_bytes": budget}
        )
        stalled = [await self.join("/hub/out/cam") for _ in range(4)]
        for client in stalled:
            client.tcp.pauseProducing()
        members = set(self.member("/hub/out/cam"))
        sender = await self.join("/hub/in/cam")
        # Send until every stalled reader has lost a message: each queue is then at its cap.
        dropped_by: set[Member] = set()
        all_full: Deferred[None] = Deferred()

        def on_drop(name: str, member: Member) -> None:
            if name == "dropped" and member in members:
                dropped_by.add(member)
                if dropped_by == members and not all_full.called:
                    all_full.callback(None)

        self.addCleanup(self.hub.add_observer(on_drop))
        sent = 0

        def pump() -> None:
            nonlocal sent
            if all_full.called:
                return
            for _ in range(8):
                sender.sendMessage(message(sent, SIZE), isBinary=True)
                sent += 1
            reactor.callLater(0, pump)

        pump()
        await all_full
        self.assertEqual(self.hub.queued_bytes, budget)
        late = await self.join("/hub/out/cam")
        code, reason = await late.closed
        self.assertEqual(code, HubCloseCode.LIMIT)
        self.assertEqual(
            reason,
            f"hub limit max_queued_bytes reached: {budget} bytes queued for slow receivers "
            f"(budget {budget}); try again later",
        )
        self.assertEqual(self.hub.refused["limit"], 1)
        # Readers that read again get the newest messages, last one last: their queues are
        # empty then, and the hub takes members again.
        last = sent - 1
        caught_up: list[Deferred[None]] = []
        for client in stalled:
            done: Deferred[None] = Deferred()
            caught_up.append(done)

            def got(payload: bytes, is_binary: bool, done: Deferred[None] = done) -> None:
                if seq_of(payload) == last and not done.called:
                    done.callback(None)

            client.on_message = got
            client.tcp.resumeProducing()
        for done in caught_up:
            await done
        self.assertEqual(self.hub.queued_bytes, 0)
        joined = self.when("joined")
        await self.join("/hub/out/cam")
        await joined


class TLSSlowReceiverTests(OverTLS, SlowReceiverTests):
    """The same over wss://: the hub hears a full TLS transport just as a TCP one."""
