"""The pairing rendezvous core: a Clock, the memory store, fake peers, no sockets."""

from __future__ import annotations

import random

import attrs
from twisted.internet.task import Clock
from twisted.trial import unittest

from nbbridge.contract import CloseCode, Joined, Nameplate, parse_pair_message
from nbbridge.relay._auth import Authority
from nbbridge.relay._config import Limits
from nbbridge.relay._pairing import MAX_MESSAGES, Rendezvous
from nbbridge.store import MemoryStore

from ._harness import AGENT_TOKEN, CLIENT_TOKEN, make_config

#: An address the per-address limits apply to (loopback is exempt by default).
FAR = "203.0.113.7"


@attrs.define(eq=False)
class FakePeer:
    texts: list[str] = attrs.field(factory=list)
    binaries: list[bytes] = attrs.field(factory=list)
    closed: tuple[int, str] | None = None
    gone: bool = False

    def send_text(self, text: str) -> None:
        self.texts.append(text)

    def send_binary(self, data: bytes) -> None:
        self.binaries.append(data)

    def close(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = (code, reason)


def code_of(peer: FakePeer) -> int | None:
    return peer.closed[0] if peer.closed is not None else None


class RendezvousTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryStore(self.clock)
        self.make()

    def make(self, **limits: object) -> None:
        self.rendezvous = Rendezvous(
            Authority(make_config()),
            Limits(**limits),  # type: ignore[arg-type]
            self.clock,
            self.store,
            "relay:test",
            rng=random.Random(1),
        )

    def turn(self) -> None:
        self.clock.advance(0)  # the store answers on a later turn

    def open(self, address: str = "127.0.0.1") -> tuple[FakePeer, int]:
        agent = FakePeer()
        self.rendezvous.open("gpu", AGENT_TOKEN, agent, address)
        self.turn()
        message = parse_pair_message(agent.texts[0])
        assert isinstance(message, Nameplate)
        return agent, message.nameplate

    def join(self, nameplate: int, address: str = "127.0.0.1") -> FakePeer:
        client = FakePeer()
        self.rendezvous.join(nameplate, client, address)
        self.turn()
        return client

    def test_open_join_and_carry(self) -> None:
        agent, nameplate = self.open()
        self.assertTrue(1 <= nameplate <= 99)
        client = self.join(nameplate)
        self.assertIsNone(client.closed)
        self.assertIsInstance(parse_pair_message(agent.texts[1]), Joined)
        self.rendezvous.carry(client, b"from client")
        self.rendezvous.carry(agent, b"from agent")
        self.assertEqual((agent.binaries, client.binaries), ([b"from client"], [b"from agent"]))

    def test_a_client_speaking_before_the_store_answers_is_heard_after_joined(self) -> None:
        """A client sends as soon as it is open; Redis answers the join after that."""
        agent, nameplate = self.open()
        client = FakePeer()
        self.rendezvous.join(nameplate, client, "127.0.0.1")
        self.rendezvous.carry(client, b"spake2 A")  # before the store's answer
        self.assertEqual(agent.binaries, [])
        self.turn()
        self.assertIsNone(client.closed)
        self.assertIsInstance(parse_pair_message(agent.texts[1]), Joined)
        self.assertEqual(agent.binaries, [b"spake2 A"])

    def test_early_messages_are_limited_and_dropped_with_a_refused_join(self) -> None:
        client = FakePeer()
        self.rendezvous.join(4242, client, "127.0.0.1")
        self.rendezvous.carry(client, b"early")
        self.turn()
        self.assertEqual(client.closed and client.closed[0], CloseCode.PAIR_CODE_GONE)
        _agent, nameplate = self.open()
        flood = FakePeer()
        self.rendezvous.join(nameplate, flood, "127.0.0.1")
        for _ in range(MAX_MESSAGES + 1):
            self.rendezvous.carry(flood, b"x")
        self.assertEqual(flood.closed and flood.closed[0], CloseCode.LIMIT)

    def test_the_nameplate_message_names_the_relay_when_it_has_an_advertise_url(self) -> None:
        self.rendezvous = Rendezvous(
            Authority(make_config()),
            Limits(),
            self.clock,
            self.store,
            "wss://lb.example/r2",
            rng=random.Random(1),
            advertise_url="wss://lb.example/r2",
        )
        agent, _nameplate = self.open()
        message = parse_pair_message(agent.texts[0])
        assert isinstance(message, Nameplate)
        self.assertEqual(message.relay, "wss://lb.example/r2")

    def test_only_an_agent_token_opens(self) -> None:
        for token in (None, CLIENT_TOKEN, "nonsense"):
            peer = FakePeer()
            self.rendezvous.open("gpu", token, peer, "127.0.0.1")
            self.turn()
            assert peer.closed is not None
            self.assertIn(peer.closed[0], (CloseCode.BAD_TOKEN, CloseCode.NOT_PERMITTED))
            self.assertEqual(peer.texts, [])

    def test_a_join_burns_the_nameplate(self) -> None:
        _agent, nameplate = self.open()
        self.join(nameplate)
        second = self.join(nameplate)
        self.assertEqual(second.closed and second.closed[0], CloseCode.PAIR_CODE_GONE)

    def test_unknown_nameplate(self) -> None:
        client = self.join(4242)
        assert client.closed is not None
        self.assertEqual(client.closed[0], CloseCode.PAIR_CODE_GONE)
        self.assertIn("mistyped, used or expired", client.closed[1])

    def test_expiry_closes_the_agent_and_frees_the_nameplate(self) -> None:
        agent, nameplate = self.open()
        self.clock.advance(Limits().pairing_code_ttl)
        self.assertEqual(agent.closed, (CloseCode.PAIR_CODE_GONE, "the code expired unused"))
        client = self.join(nameplate)
        self.assertEqual(client.closed and client.closed[0], CloseCode.PAIR_CODE_GONE)
        self.assertEqual(self.rendezvous.waiting, 0)

    def test_exchange_deadline_after_join(self) -> None:
        agent, nameplate = self.open()
        client = self.join(nameplate)
        self.clock.advance(Limits().pairing_timeout)
        for peer in (agent, client):
            self.assertEqual(peer.closed, (CloseCode.PAIR_PEER_LEFT, "the pairing took too long"))

    def test_one_side_leaving_closes_the_other(self) -> None:
        agent, nameplate = self.open()
        client = self.join(nameplate)
        client.gone = True
        self.rendezvous.left(client, 1000, "pairing failed: wrong code")
        self.assertEqual(
            agent.closed,
            (CloseCode.PAIR_PEER_LEFT, "the other side left: pairing failed: wrong code"),
        )

    def test_agent_leaving_before_a_join_frees_the_nameplate(self) -> None:
        agent, nameplate = self.open()
        agent.gone = True
        self.rendezvous.left(agent, 1000, None)
        self.turn()
        client = self.join(nameplate)
        self.assertEqual(client.closed and client.closed[0], CloseCode.PAIR_CODE_GONE)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_agent_leaving_while_the_store_answers(self) -> None:
        agent = FakePeer()
        self.rendezvous.open("gpu", AGENT_TOKEN, agent, "127.0.0.1")
        agent.gone = True
        self.turn()
        self.assertEqual(agent.texts, [])
        self.assertEqual(self.rendezvous.waiting, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nothing_is_carried_before_the_join(self) -> None:
        agent, _ = self.open()
        self.rendezvous.carry(agent, b"early")
        self.assertEqual(agent.closed and agent.closed[0], CloseCode.NOT_PERMITTED)

    def test_messages_per_side_are_capped(self) -> None:
        agent, nameplate = self.open()
        client = self.join(nameplate)
        for _ in range(MAX_MESSAGES):
            self.rendezvous.carry(client, b"x")
        self.assertIsNone(client.closed)
        self.rendezvous.carry(client, b"x")
        self.assertEqual(client.closed and client.closed[0], CloseCode.LIMIT)
        self.assertEqual(len(agent.binaries), MAX_MESSAGES)

    def test_codes_per_agent(self) -> None:
        self.make(pairings_per_agent=2)
        self.open()
        self.open()
        third = FakePeer()
        self.rendezvous.open("gpu", AGENT_TOKEN, third, "127.0.0.1")
        self.turn()
        assert third.closed is not None
        self.assertEqual(third.closed[0], CloseCode.LIMIT)
        self.assertIn("pairings_per_agent", third.closed[1])

    def test_attempts_per_address(self) -> None:
        self.make(pairings_per_ip_per_minute=3)
        for nameplate in (1, 2, 3):
            self.assertEqual(code_of(self.join(nameplate, FAR)), CloseCode.PAIR_CODE_GONE)
        refused = self.join(4, FAR).closed
        assert refused is not None
        self.assertEqual(refused[0], CloseCode.LIMIT)
        self.assertIn("pairings_per_ip_per_minute = 3", refused[1])
        # Another address is not held back; and a minute later this one may try again.
        self.assertEqual(code_of(self.join(5, "198.51.100.1")), CloseCode.PAIR_CODE_GONE)
        self.clock.advance(60)
        self.assertEqual(code_of(self.join(6, FAR)), CloseCode.PAIR_CODE_GONE)
        self.assertEqual(self.rendezvous.refusals.counts, {"pairings_per_ip_per_minute": 1})

    def test_attempts_in_all(self) -> None:
        self.make(pairings_per_minute=2)
        self.join(1, "198.51.100.1")
        self.join(2, "198.51.100.2")
        refused = self.join(3, "198.51.100.3").closed
        assert refused is not None
        self.assertEqual(refused[0], CloseCode.LIMIT)
        self.assertIn("pairings_per_minute = 2", refused[1])
