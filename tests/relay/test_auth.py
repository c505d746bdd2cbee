"""Token lookup by digest: one comparison per token, whatever the number of entries, and the
same refusals as before."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from nbbridge.contract import CloseCode
from nbbridge.relay import _auth, hash_token
from nbbridge.relay._auth import Authority, Identity, Refusal
from nbbridge.relay._config import parse_config

ENTRIES = 10_000


def agent_token(i: int) -> str:
    return f"agent-token-{i:05d}-0123456789abcdef"


def big_config() -> Any:
    agents = {f"agent-{i}": {"token_sha256": hash_token(agent_token(i))} for i in range(ENTRIES)}
    clients = {
        "laptop": {"token_sha256": hash_token("client-laptop-0123456789"), "agents": ["*"]},
        "phone": {"token_sha256": hash_token("client-phone-0123456789"), "agents": ["agent-1"]},
    }
    return parse_config({"agents": agents, "clients": clients}, "relay.toml")


class DigestLookupTests(unittest.TestCase):
    def setUp(self) -> None:
        self.authority = Authority(big_config())
        self.comparisons = 0
        real = _auth.hmac.compare_digest

        def counting(a: bytes, b: bytes) -> bool:
            self.comparisons += 1
            return real(a, b)

        self.patch(_auth.hmac, "compare_digest", counting)

    def test_each_token_is_compared_with_one_entry_at_most(self) -> None:
        for i in (0, 1, ENTRIES // 2, ENTRIES - 1):
            self.comparisons = 0
            self.assertEqual(
                self.authority.identify(agent_token(i)), Identity("agent", f"agent-{i}")
            )
            self.assertEqual(self.comparisons, 1)
        self.comparisons = 0
        self.assertIsNone(self.authority.identify("not-a-token-of-anyone"))
        self.assertEqual(self.comparisons, 0)
        self.assertEqual(
            self.authority.identify("client-laptop-0123456789"), Identity("client", "laptop")
        )

    def test_refusals_are_unchanged(self) -> None:
        check_agent, check_client = self.authority.check_agent, self.authority.check_client
        self.assertIsNone(check_agent("agent-7", agent_token(7)))
        self.assertEqual(
            check_agent("agent-7", None), Refusal(CloseCode.BAD_TOKEN, "missing bearer token")
        )
        self.assertEqual(
            check_agent("agent-7", "guess"), Refusal(CloseCode.BAD_TOKEN, "token not recognised")
        )
        self.assertEqual(
            check_agent("agent-7", agent_token(8)),
            Refusal(CloseCode.NOT_PERMITTED, "agent 'agent-8' may not register as 'agent-7'"),
        )
        self.assertEqual(
            check_agent("agent-7", "client-laptop-0123456789"),
            Refusal(CloseCode.NOT_PERMITTED, "a client token cannot act as agent 'agent-7'"),
        )
        self.assertEqual(
            check_client("agent-7", "client-laptop-0123456789"), Identity("client", "laptop")
        )
        self.assertEqual(
            check_client("agent-7", agent_token(7)),
            Refusal(CloseCode.NOT_PERMITTED, "an agent token cannot open a client link"),
        )
        self.assertEqual(
            check_client("agent-7", "client-phone-0123456789"),
            Refusal(CloseCode.NOT_PERMITTED, "client 'phone' may not reach agent 'agent-7'"),
        )
        self.assertEqual(
            check_client("nobody", "client-laptop-0123456789"),
            Refusal(CloseCode.OFFLINE, "agent 'nobody' is unknown"),
        )
        self.assertEqual(
            check_client("agent-1", "guess"), Refusal(CloseCode.BAD_TOKEN, "token not recognised")
        )

    def test_open_mode_takes_anyone(self) -> None:
        authority = Authority(None)
        self.assertIsNone(authority.identify("x"))
        self.assertIsNone(authority.check_agent("a", None))
        self.assertEqual(authority.check_client("a", None), _auth.ANYONE)

    def test_equal_authorities_compare_by_config(self) -> None:
        config = big_config()
        self.assertEqual(Authority(config), Authority(config))
