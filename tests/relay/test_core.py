"""Unit tests of the sans-IO core: a Clock, fake peers, no sockets."""

from __future__ import annotations

import itertools

import attrs
from twisted.internet.task import Clock
from twisted.trial import unittest

from nbbridge.contract import CloseCode
from nbbridge.relay._auth import Authority, Refusal
from nbbridge.relay._config import Limits
from nbbridge.relay._core import ActiveLink, PendingLink, Relay, new_link_id
from nbbridge.relay._splice import Splice

from ._harness import (
    AGENT_TOKEN,
    CLIENT_TOKEN,
    LIMITED_CLIENT_TOKEN,
    OTHER_AGENT_TOKEN,
    make_config,
)


@attrs.define
class FakeControl:
    dials: list[str] = attrs.Factory(list)
    closed: tuple[int, str] | None = None
    registered: str | None = None

    def send_registered(self, name: str) -> None:
        self.registered = name

    def send_dial(self, link_id: str, url: str) -> None:
        # The dial names the data route of its own link (no --advertise-url: a path).
        assert url.endswith(f"/data/{link_id}") and url.startswith("/v1/agents/"), url
        self.dials.append(link_id)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


@attrs.define
class FakeLink:
    closed: tuple[int, str] | None = None

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def refused(result: object) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


class RelayCoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        counter = itertools.count()
        self.relay = Relay(
            Authority(make_config()),
            Limits(links_per_agent=3, pending_dials_per_agent=2),
            self.clock,
            make_link_id=lambda: f"link{next(counter):028d}",
        )

    def online(self, name: str = "gpu") -> FakeControl:
        control = FakeControl()
        token = AGENT_TOKEN if name == "gpu" else OTHER_AGENT_TOKEN
        self.assertIsNone(self.relay.register_agent(name, token, control))
        return control

    def request(self, token: str = CLIENT_TOKEN) -> tuple[FakeLink, PendingLink]:
        link = FakeLink()
        pending = self.relay.request_link("gpu", token, link)
        assert isinstance(pending, PendingLink), pending
        return link, pending

    def answer(self, link_id: str) -> ActiveLink:
        result = self.relay.answer_dial("gpu", link_id, AGENT_TOKEN)
        assert isinstance(result, tuple), result
        return result[1]

    def test_register_and_dial(self) -> None:
        control = self.online()
        self.assertTrue(self.relay.is_online("gpu"))
        link, pending = self.request()
        self.assertEqual(control.dials, [pending.link_id])
        self.assertEqual(pending.client, "laptop")
        peer, _ = self.relay.answer_dial("gpu", pending.link_id, AGENT_TOKEN)
        self.assertIs(peer, link)
        self.assertEqual(self.relay.status()["links"], 1)
        self.assertEqual(self.relay.pending_count, 0)
        # A link id is good once.
        again = refused(self.relay.answer_dial("gpu", pending.link_id, AGENT_TOKEN))
        self.assertEqual(again.code, CloseCode.OFFLINE)

    def test_refusals(self) -> None:
        self.assertEqual(
            self.relay.register_agent("gpu", "wrong", FakeControl()),
            Refusal(CloseCode.BAD_TOKEN, "token not recognised"),
        )
        self.assertEqual(
            self.relay.request_link("gpu", CLIENT_TOKEN, FakeLink()),
            Refusal(CloseCode.OFFLINE, "agent 'gpu' is offline"),
        )
        self.online()
        refusal = refused(self.relay.request_link("gpu", LIMITED_CLIENT_TOKEN, FakeLink()))
        self.assertEqual(refusal.code, CloseCode.NOT_PERMITTED)
        refusal = refused(self.relay.request_link("gpu", AGENT_TOKEN, FakeLink()))
        self.assertEqual(refusal.code, CloseCode.NOT_PERMITTED)

    def test_dial_timeout(self) -> None:
        self.online()
        link, pending = self.request()
        self.clock.advance(9.99)
        self.assertIsNone(link.closed)
        self.clock.advance(0.01)
        self.assertEqual(
            link.closed, (CloseCode.DIAL_TIMEOUT, "agent 'gpu' did not answer the dial within 10 s")
        )
        self.assertEqual(self.relay.pending_count, 0)
        self.assertIsInstance(self.relay.answer_dial("gpu", pending.link_id, AGENT_TOKEN), Refusal)

    def test_abandoned_link_cancels_its_timer(self) -> None:
        self.online()
        _, pending = self.request()
        self.relay.abandon_link(pending)
        self.clock.advance(0)  # the registry's answers arrive on a later turn
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.relay.abandon_link(pending)  # twice is harmless
        self.assertIsInstance(self.relay.answer_dial("gpu", pending.link_id, AGENT_TOKEN), Refusal)

    def test_replacement(self) -> None:
        old = self.online()
        link, pending = self.request()
        new = self.online()
        self.assertEqual(
            old.closed, (CloseCode.REPLACED, "replaced by a newer connection of this agent")
        )
        self.assertEqual(new.dials, [pending.link_id])
        # The old connection's end is not the agent's end.
        self.relay.agent_gone("gpu", old)
        self.assertTrue(self.relay.is_online("gpu"))
        self.assertIsNone(link.closed)

    def test_replaced_connection_closing_later_changes_nothing(self) -> None:
        old = self.online()
        _, first = self.request()
        new = self.online()
        self.relay.agent_gone("gpu", old)
        self.assertEqual(self.relay.pending_count, 1)
        # Only the current connection's close takes the agent offline and fails its dials.
        self.relay.agent_gone("gpu", new)
        self.assertFalse(self.relay.is_online("gpu"))
        self.assertEqual(self.relay.pending_count, 0)
        self.assertEqual(self.relay.dial_failures, 1)
        self.assertIsInstance(self.relay.answer_dial("gpu", first.link_id, AGENT_TOKEN), Refusal)
        self.relay.agent_gone("gpu", new)  # twice is harmless
        self.assertEqual(self.relay.dial_failures, 1)

    def test_refused_connection_closing_changes_nothing(self) -> None:
        self.online()
        link, _ = self.request()
        refused_peer = FakeControl()
        self.assertIsInstance(self.relay.register_agent("gpu", "wrong", refused_peer), Refusal)
        self.relay.agent_gone("gpu", refused_peer)
        self.relay.agent_gone("other", refused_peer)
        self.assertTrue(self.relay.is_online("gpu"))
        self.assertIsNone(link.closed)
        self.assertEqual(self.relay.pending_count, 1)

    def test_answered_dial_leaves_both_counts(self) -> None:
        self.online()
        _, first = self.request()
        self.request()
        self.assertEqual(self.relay.pending_count, 2)
        self.answer(first.link_id)
        self.assertEqual(self.relay.pending_count, 1)
        # The agent's own count dropped too: its limit of 2 pending dials has room again.
        self.request()
        self.assertEqual(self.relay.pending_count, 2)
        self.assertEqual(self.relay.status()["links"], 1)

    def test_a_dial_is_answered_only_by_its_own_agent(self) -> None:
        self.online()
        self.online("cpu")
        link, pending = self.request()
        refusal = refused(self.relay.answer_dial("cpu", pending.link_id, OTHER_AGENT_TOKEN))
        self.assertEqual(refusal.code, CloseCode.OFFLINE)
        self.assertEqual(self.relay.pending_count, 1)
        result = self.relay.answer_dial("gpu", pending.link_id, AGENT_TOKEN)
        assert isinstance(result, tuple), result
        self.assertIs(result[0], link)

    def test_pending_count_spans_agents(self) -> None:
        self.online()
        cpu = self.online("cpu")
        self.request()
        other = self.relay.request_link("cpu", CLIENT_TOKEN, FakeLink())
        assert isinstance(other, PendingLink), other
        self.assertEqual(self.relay.pending_count, 2)
        self.relay.agent_gone("cpu", cpu)
        self.assertEqual(self.relay.pending_count, 1)
        self.relay.abandon_link(other)  # already failed: harmless
        self.assertEqual(self.relay.pending_count, 1)

    def test_agent_gone_fails_pending_keeps_spliced(self) -> None:
        control = self.online()
        spliced = self.answer(self.request()[1].link_id)
        waiting, _ = self.request()
        self.relay.agent_gone("gpu", control)
        self.assertFalse(self.relay.is_online("gpu"))
        self.assertEqual(waiting.closed and waiting.closed[0], CloseCode.OFFLINE)
        self.assertEqual(self.relay.status()["links"], 1)
        self.relay.carried(spliced, 10)
        self.relay.link_ended(spliced)
        self.relay.link_ended(spliced)  # twice is harmless
        self.assertEqual(self.relay.status()["links"], 0)
        self.assertEqual(self.relay.status()["bytes"], 10)
        self.clock.advance(0)  # the registry's answers arrive on a later turn
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_limits(self) -> None:
        self.online()
        self.request()
        self.request()
        refusal = refused(self.relay.request_link("gpu", CLIENT_TOKEN, FakeLink()))
        self.assertEqual(refusal.code, CloseCode.LIMIT)
        self.assertIn("2 dials pending", refusal.reason)

    def test_links_limit_counts_spliced_and_pending(self) -> None:
        self.online()
        self.answer(self.request()[1].link_id)
        self.answer(self.request()[1].link_id)
        self.request()
        refusal = refused(self.relay.request_link("gpu", CLIENT_TOKEN, FakeLink()))
        self.assertEqual(refusal.code, CloseCode.LIMIT)
        self.assertIn("limit of 3 links", refusal.reason)

    def test_max_agents(self) -> None:
        relay = Relay(Authority(None), Limits(max_agents=1), self.clock)
        self.assertIsNone(relay.register_agent("a", None, FakeControl()))
        refusal = refused(relay.register_agent("b", None, FakeControl()))
        self.assertEqual(refusal.code, CloseCode.LIMIT)
        # Replacing an agent that is online does not count twice.
        self.assertIsNone(relay.register_agent("a", None, FakeControl()))

    def test_status(self) -> None:
        self.online()
        active = self.answer(self.request()[1].link_id)
        self.relay.carried(active, 1234)
        status = self.relay.status(admin=True)
        self.assertEqual(
            status["agents"],
            [{"name": "gpu", "since": "2023-11-14T22:13:20+00:00", "links": 1, "bytes": 1234}],
        )
        self.assertEqual(status["agents_online"], 1)
        self.assertNotIn("agents", self.relay.status())

    def test_open_mode(self) -> None:
        relay = Relay(Authority(None), Limits(), self.clock)
        control = FakeControl()
        self.assertIsNone(relay.register_agent("anything", None, control))
        pending = relay.request_link("anything", "whatever", FakeLink())
        self.assertIsInstance(pending, PendingLink)

    def test_link_ids_are_unguessable(self) -> None:
        ids = {new_link_id() for _ in range(100)}
        self.assertEqual(len(ids), 100)
        self.assertTrue(all(len(i) == 32 for i in ids))


@attrs.define(eq=False)
class FakeEnd:
    """One end of a splice, recording what the splice does to it."""

    write_full: bool = False
    server_close: tuple[int, str] | None = None
    sent: list[bytes] = attrs.Factory(list)
    holds: set[str] = attrs.Factory(set)
    closed: tuple[int, str] | None = None

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def hold_reading(self, reason: str) -> None:
        self.holds.add(reason)

    def release_reading(self, reason: str) -> None:
        self.holds.discard(reason)


class SpliceUnitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.relay = Relay(Authority(None), Limits(), Clock())
        self.relay.register_agent("gpu", None, FakeControl())
        pending = self.relay.request_link("gpu", None, FakeLink())
        assert isinstance(pending, PendingLink)
        result = self.relay.answer_dial("gpu", pending.link_id, None)
        assert isinstance(result, tuple)
        self.link = result[1]
        self.client, self.agent = FakeEnd(), FakeEnd()
        self.splice = Splice(self.relay, self.link, self.client, self.agent)

    def test_forward_and_count(self) -> None:
        self.splice.start([(b"\x82\x05early", 5)])
        self.splice.forward(self.agent, b"\x81\x04down", 4)
        self.assertEqual(self.agent.sent, [b"\x82\x05early"])
        self.assertEqual(self.client.sent, [b"\x81\x04down"])
        self.assertEqual(self.relay.status()["bytes"], 9)

    def test_backpressure_both_ways(self) -> None:
        self.splice.write_full_changed(self.client, True)
        self.assertEqual(self.agent.holds, {"peer-full"})
        self.assertEqual(self.client.holds, set())
        self.splice.write_full_changed(self.agent, True)
        self.assertEqual(self.client.holds, {"peer-full"})
        self.splice.write_full_changed(self.client, False)
        self.assertEqual(self.agent.holds, set())

    def test_start_applies_current_backpressure(self) -> None:
        self.client.write_full = True
        self.splice.start([])
        self.assertEqual(self.agent.holds, {"peer-full"})

    def test_close_propagates_once(self) -> None:
        self.splice.end_closed(self.client, 4000, "bye")
        self.assertEqual(self.agent.closed, (4000, "bye"))
        self.assertEqual(self.relay.status()["links"], 0)
        self.splice.end_closed(self.agent, 1000, "")
        self.assertIsNone(self.client.closed)
        self.splice.forward(self.client, b"\x82\x04late", 4)
        self.assertEqual(self.agent.sent, [])

    def test_server_close_wins(self) -> None:
        self.agent.server_close = (CloseCode.TOO_BIG, "too big")
        self.splice.end_closed(self.agent, 1000, "")
        self.assertEqual(self.client.closed, (CloseCode.TOO_BIG, "too big"))


class ClientQuotaTests(unittest.TestCase):
    """links_per_client counts a client's waiting and spliced links to one agent, and frees
    them when they end however they end (answered and closed, abandoned, timed out)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.relay = Relay(Authority(make_config()), Limits(links_per_client=1), self.clock)
        self.assertIsNone(self.relay.register_agent("gpu", AGENT_TOKEN, FakeControl()))

    def request(self) -> PendingLink | Refusal:
        return self.relay.request_link("gpu", CLIENT_TOKEN, FakeLink())

    def test_quota_and_its_release(self) -> None:
        pending = self.request()
        assert isinstance(pending, PendingLink)
        refusal = refused(self.request())
        self.assertEqual(refusal.code, CloseCode.LIMIT)
        self.assertEqual(
            refusal.reason, "client 'laptop' holds 1 links to this agent (links_per_client)"
        )
        self.relay.abandon_link(pending)
        pending = self.request()
        assert isinstance(pending, PendingLink)
        self.clock.advance(Limits().dial_timeout)
        pending = self.request()
        assert isinstance(pending, PendingLink)
        result = self.relay.answer_dial("gpu", pending.link_id, AGENT_TOKEN)
        assert isinstance(result, tuple)
        refused(self.request())
        self.relay.link_ended(result[1])
        self.assertIsInstance(self.request(), PendingLink)

    def test_not_applied_without_config(self) -> None:
        # Without relay.toml every client is "anyone": a shared quota would be a global one.
        relay = Relay(Authority(None), Limits(links_per_client=1), self.clock)
        relay.register_agent("gpu", None, FakeControl())
        self.assertIsInstance(relay.request_link("gpu", None, FakeLink()), PendingLink)
        self.assertIsInstance(relay.request_link("gpu", None, FakeLink()), PendingLink)
