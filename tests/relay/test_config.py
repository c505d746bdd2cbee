"""relay.toml parsing: good files load, each mistake is one line naming the file and the key."""

from __future__ import annotations

import os
from typing import Any

from nbbridge._secrets import token_digest
from nbbridge.relay import hash_token
from nbbridge.relay._auth import Authority, Identity, check_admin
from nbbridge.relay._config import ConfigError, Limits, load_config, parse_config

from ._harness import FileTestCase

GOOD = """
[agents.gpu]
token_sha256 = "{gpu}"

[clients.laptop]
token_sha256 = "{laptop}"
agents = ["gpu"]

[clients.ops]
token_sha256 = "{ops}"
agents = ["*"]

[limits]
links_per_agent = 8
dial_timeout = 2.5
"""


class ConfigTests(FileTestCase):
    def test_good_file(self) -> None:
        path = self.write(
            GOOD.format(gpu=hash_token("g"), laptop=hash_token("l"), ops=hash_token("o").upper())
        )
        config = load_config(path)
        self.assertEqual(config.source, path)
        self.assertEqual(config.agents, {"gpu": token_digest("g")})
        self.assertEqual(config.clients["laptop"].agents, frozenset({"gpu"}))
        self.assertIsNone(config.clients["ops"].agents)
        self.assertEqual(config.limits, Limits(links_per_agent=8, dial_timeout=2.5))
        authority = Authority(config)
        self.assertEqual(authority.identify("o"), Identity("client", "ops"))
        self.assertEqual(authority.identify("g"), Identity("agent", "gpu"))
        self.assertIsNone(authority.identify("nobody"))

    def test_empty_file_is_a_closed_relay(self) -> None:
        config = load_config(self.write(""))
        self.assertEqual((dict(config.agents), dict(config.clients)), ({}, {}))
        self.assertEqual(config.limits, Limits())

    def test_errors_name_file_and_key(self) -> None:
        h = hash_token("a")
        cases: list[tuple[dict[str, Any], str]] = [
            ({"agent": {}}, "relay.toml: agent: unknown key"),
            ({"agents": {"gpu": {}}}, "relay.toml: agents.gpu.token_sha256: missing"),
            (
                {"agents": {"gpu": {"token_sha256": "abc"}}},
                "relay.toml: agents.gpu.token_sha256: must be 64 hex digits (sha256 of the token)",
            ),
            (
                {"agents": {"gpu": {"token_sha256": "zz" * 32}}},
                "relay.toml: agents.gpu.token_sha256: must be 64 hex digits",
            ),
            (
                {"agents": {"gpu": {"token_sha256": h, "token": "x"}}},
                "relay.toml: agents.gpu.token: unknown key",
            ),
            ({"agents": {"bad name": {"token_sha256": h}}}, "relay.toml: agents.bad name: invalid"),
            ({"agents": {"gpu": "x"}}, "relay.toml: agents.gpu: must be a table"),
            ({"agents": []}, "relay.toml: agents: must be a table"),
            (
                {"clients": {"c": {"token_sha256": h}}},
                'relay.toml: clients.c.agents: missing (a list of agent names, or ["*"])',
            ),
            (
                {"clients": {"c": {"token_sha256": h, "agents": "gpu"}}},
                'relay.toml: clients.c.agents: must be a list of agent names, or ["*"]',
            ),
            (
                {"clients": {"c": {"token_sha256": h, "agents": ["*", "gpu"]}}},
                'relay.toml: clients.c.agents: "*" must be the only entry',
            ),
            (
                {"clients": {"c": {"token_sha256": h, "agents": ["gpu"]}}},
                "relay.toml: clients.c.agents: 'gpu' has no [agents.gpu] entry",
            ),
            (
                {
                    "agents": {"gpu": {"token_sha256": h}},
                    "clients": {"c": {"token_sha256": h, "agents": ["gpu"]}},
                },
                "relay.toml: clients.c.token_sha256: same token as agents.gpu",
            ),
            ({"limits": {"links_per_agent": "8"}}, "relay.toml: limits.links_per_agent: must be"),
            ({"limits": {"links_per_agent": True}}, "relay.toml: limits.links_per_agent: must be"),
            ({"limits": {"links_per_agent": 0}}, "relay.toml: limits.links_per_agent: must be"),
            ({"limits": {"dial_timeout": "10"}}, "relay.toml: limits.dial_timeout: must be"),
            ({"limits": {"speed": 1}}, "relay.toml: limits.speed: unknown limit"),
        ]
        for data, expected in cases:
            with self.assertRaises(ConfigError) as caught:
                parse_config(data, "relay.toml")
            message = str(caught.exception)
            self.assertTrue(message.startswith(expected), f"{message!r} vs {expected!r}")
            self.assertNotIn("\n", message)

    def test_unreadable_and_invalid_files(self) -> None:
        missing = os.path.join(self.mktemp(), "relay.toml")
        with self.assertRaises(ConfigError) as caught:
            load_config(missing)
        self.assertEqual(
            str(caught.exception), f"{missing}: cannot read: No such file or directory"
        )
        broken = self.write("[agents.gpu\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(broken)
        self.assertTrue(str(caught.exception).startswith(f"{broken}: invalid TOML: "))

    def test_admin_check(self) -> None:
        digest = token_digest("admin")
        self.assertTrue(check_admin(digest, "admin"))
        self.assertFalse(check_admin(digest, "Admin"))
        self.assertFalse(check_admin(digest, None))
        self.assertFalse(check_admin(None, "admin"))
