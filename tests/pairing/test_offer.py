"""What arrives in an offer is checked before it reaches a file."""

from __future__ import annotations

import json

from twisted.trial import unittest

from nbbridge.crypto import PrivateKey
from nbbridge.pairing import AgentOffer, ClientOffer, PairingFailed, clean_label

KEY = PrivateKey.generate().public_key


def agent_fields(**changes: object) -> bytes:
    fields = {
        "v": 1,
        "agent_key": KEY.to_text(),
        "agent": "gpu",
        "relay": "wss://relay.example.com",
        "services": ["jupyter", "ssh"],
        "token": None,
    }
    fields.update(changes)
    return json.dumps(fields).encode()


class OfferTests(unittest.TestCase):
    def test_round_trips(self) -> None:
        offer = AgentOffer(KEY, "gpu", "wss://relay.example.com", ("jupyter",), "t" * 40)
        self.assertEqual(AgentOffer.decode(offer.encode()), offer)
        client = ClientOffer(KEY, "laptop")
        self.assertEqual(ClientOffer.decode(client.encode()), client)
        self.assertNotIn("t" * 40, repr(offer))

    def test_refusals(self) -> None:
        for changes, why in [
            ({"agent_key": "nbb1nope"}, "public key is unusable"),
            ({"agent": "../etc"}, "names no valid agent"),
            ({"relay": "http://x"}, "no usable relay URL"),
            ({"services": ["a b"]}, "bad service name"),
            ({"services": "jupyter"}, "bad service list"),
            ({"token": "short"}, "malformed relay token"),
            ({"token": "x" * 20 + "\n"}, "malformed relay token"),
            ({"v": 2}, "another pairing version"),
        ]:
            error = self.assertRaises(PairingFailed, AgentOffer.decode, agent_fields(**changes))
            self.assertIn(why, str(error))
        self.assertRaises(PairingFailed, ClientOffer.decode, b"not json")

    def test_labels_are_one_safe_word(self) -> None:
        self.assertEqual(clean_label("Ann's MacBook Pro\nnbb1evil"), "Ann-s-MacBook-Pro-nbb1evil")
        self.assertEqual(clean_label("../"), "laptop")
        self.assertEqual(len(clean_label("x" * 500)), 64)
