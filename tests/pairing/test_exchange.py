"""The sans-IO exchange: two `Exchange`s wired by hand, and what goes wrong between them."""

from __future__ import annotations

from twisted.trial import unittest

from nbbridge.pairing import (
    WORDS,
    Code,
    CodeError,
    Exchange,
    PairingFailed,
    PeerDone,
    PeerOffer,
    Role,
    Send,
    new_code,
    parse_code,
)

CODE = Code(7, ("crossover", "clockwork"))


def sends(events: list[object]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, Send)]


class ExchangeTests(unittest.TestCase):
    def pair(self, agent_code: Code = CODE, client_code: Code = CODE) -> tuple[Exchange, Exchange]:
        return (
            Exchange(Role.AGENT, agent_code, b"agent offer"),
            Exchange(Role.CLIENT, client_code, b"client offer"),
        )

    def test_right_code(self) -> None:
        """Both ends get the other's offer and finish after the other's 'done'."""
        agent, client = self.pair()
        agent_pake, client_pake = agent.start(), client.start()
        (agent_confirm,) = sends(agent.receive(client_pake))
        (client_confirm,) = sends(client.receive(agent_pake))
        (agent_sealed,) = sends(agent.receive(client_confirm))
        (client_sealed,) = sends(client.receive(agent_confirm))
        self.assertEqual(client.receive(agent_sealed), [PeerOffer(b"agent offer")])
        self.assertEqual(agent.receive(client_sealed), [PeerOffer(b"client offer")])
        self.assertNotIn(b"agent offer", agent_sealed)
        client_done, agent_done = client.done(), agent.done()
        self.assertEqual(agent.receive(client_done), [PeerDone()])
        self.assertEqual(client.receive(agent_done), [PeerDone()])
        self.assertTrue(agent.finished and client.finished)

    def test_wrong_code_fails_both_at_confirmation(self) -> None:
        """Nothing sealed is ever sent: each end refuses the other's confirmation."""
        agent, client = self.pair(client_code=Code(7, ("crossover", "clover")))
        agent_pake, client_pake = agent.start(), client.start()
        (agent_confirm,) = sends(agent.receive(client_pake))
        (client_confirm,) = sends(client.receive(agent_pake))
        for end, confirm in ((agent, client_confirm), (client, agent_confirm)):
            error = self.assertRaises(PairingFailed, end.receive, confirm)
            self.assertIn("wrong code", str(error))

    def test_nameplate_is_part_of_the_password(self) -> None:
        agent, client = self.pair(client_code=Code(8, CODE.words))
        agent_pake, client_pake = agent.start(), client.start()
        (agent_confirm,) = sends(agent.receive(client_pake))
        sends(client.receive(agent_pake))
        self.assertRaises(PairingFailed, client.receive, agent_confirm)

    def test_tampered_offer(self) -> None:
        agent, client = self.pair()
        agent_pake, client_pake = agent.start(), client.start()
        (agent_confirm,) = sends(agent.receive(client_pake))
        (client_confirm,) = sends(client.receive(agent_pake))
        (agent_sealed,) = sends(agent.receive(client_confirm))
        client.receive(agent_confirm)
        tampered = agent_sealed[:-1] + bytes([agent_sealed[-1] ^ 1])
        error = self.assertRaises(PairingFailed, client.receive, tampered)
        self.assertIn("failed authentication", str(error))

    def test_out_of_order_and_reflected(self) -> None:
        agent, client = self.pair()
        self.assertRaises(PairingFailed, agent.receive, b"\x03" + b"x" * 40)
        self.assertRaises(PairingFailed, Exchange(Role.AGENT, CODE, b"").receive, b"")
        # The agent's own SPAKE2 message sent back to it is not a client's.
        reflected = Exchange(Role.AGENT, CODE, b"")
        self.assertRaises(PairingFailed, reflected.receive, reflected.start())
        self.assertRaises(PairingFailed, client.done)


class CodeTests(unittest.TestCase):
    def test_words(self) -> None:
        self.assertEqual(len(set(WORDS)), 256)
        self.assertTrue(all(w.isalpha() and w.islower() for w in WORDS))

    def test_round_trip(self) -> None:
        code = new_code(42)
        self.assertEqual(parse_code(f"  {str(code).upper()} "), code)
        self.assertEqual(str(parse_code("7-crossover-clockwork")), "7-crossover-clockwork")

    def test_bad_codes(self) -> None:
        for text, why in [
            ("7-crossover", "looks like"),
            ("0-crossover-clockwork", "looks like"),
            ("7-crossover-clockwrk", "'clockwrk' is not one of the code words"),
            ("seven-crossover-clockwork", "looks like"),
        ]:
            self.assertIn(why, str(self.assertRaises(CodeError, parse_code, text)))
