"""Unit: the [hub] section of relay.toml, and topic names and routes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from nbbridge.hub import HubConfig, HubRoute, Role, hub_path, parse_hub_path, valid_topic
from nbbridge.hub._routes import BadRoute
from nbbridge.relay import hash_token
from nbbridge.relay._config import ConfigError, load_config, parse_config
from nbbridge.relay.tap import SECTIONS

from ..relay._harness import FileTestCase

GOOD = f"""
[hub]
prefix = "/lab/hub/"
queue_bytes = 1048576
max_message_size = 65536
stats_interval = 2
stats_token_sha256 = "{hash_token("stats")}"

[hub.tokens.camera]
token_sha256 = "{hash_token("cam")}"

[[hub.access]]
topics = ["lab/*", "cam-?"]
send = ["camera"]

[[hub.access]]
topics = "private/*"
read = ["*"]
"""


class HubConfigTests(FileTestCase):
    def test_good_file(self) -> None:
        config = load_config(self.write(GOOD), SECTIONS).sections["hub"]
        self.assertEqual(config.prefix, "/lab/hub")
        self.assertEqual(config.prefix_segments, [b"lab", b"hub"])
        self.assertEqual((config.queue_bytes, config.max_message_size), (1048576, 65536))
        self.assertEqual(config.stats_interval, 2.0)
        self.assertTrue(config.stats_allowed("stats"))
        self.assertFalse(config.stats_allowed("nope"))
        self.assertFalse(config.stats_allowed(None))
        self.assertEqual(config.token_name("cam"), "camera")
        self.assertIsNone(config.token_name("stats"))
        first, second = config.access
        self.assertEqual(first.patterns, ("lab/*", "cam-?"))
        self.assertEqual((first.send, first.read), (frozenset({"camera"}), None))
        self.assertTrue(first.matches("lab/a/b"))
        self.assertTrue(first.matches("cam-1"))
        self.assertFalse(first.matches("LAB/a"))
        self.assertEqual(second.read, frozenset({"*"}))
        self.assertNotIn(hash_token("cam"), repr(config))

    def test_defaults(self) -> None:
        config = parse_config({}, "t", SECTIONS).sections["hub"]
        self.assertEqual(config, HubConfig())
        self.assertEqual(config.prefix, "/hub")
        self.assertEqual(config.queue_bytes, 1024 * 1024)
        self.assertEqual(config.access, ())
        # No stats token configured: nobody holds it; anonymous requests see the totals only.
        self.assertFalse(config.stats_allowed(None))
        self.assertFalse(config.stats_allowed("anything"))
        self.assertEqual(config.stats_view(None), "totals")

    def test_limits_and_stats_view(self) -> None:
        config = parse_config(
            {
                "hub": {
                    "max_queued_bytes": 8 << 20,
                    "max_members_per_topic": 5,
                    "max_members_per_address": 2,
                    "stats_anonymous": "none",
                    "stats_token_sha256": hash_token("stats"),
                }
            },
            "t",
            SECTIONS,
        ).sections["hub"]
        self.assertEqual(config.max_queued_bytes, 8 << 20)
        self.assertEqual((config.max_members_per_topic, config.max_members_per_address), (5, 2))
        self.assertEqual((config.stats_view(None), config.stats_view("x")), ("none", "none"))
        self.assertEqual(config.stats_view("stats"), "full")

    def test_errors_name_file_and_key(self) -> None:
        h = hash_token("a")
        cases = [
            ({"colour": 1}, "t.toml: hub.colour: unknown key"),
            ({"prefix": "hub"}, "hub.prefix: must be a path"),
            ({"prefix": "/"}, "hub.prefix: must be '/' and one or more segments"),
            ({"prefix": "/stats"}, "hub.prefix: /stats is one of the relay's own routes"),
            ({"prefix": "/v1/hub"}, "/v1 is one of the relay's own routes"),
            ({"queue_bytes": "4M"}, "hub.queue_bytes: must be an integer"),
            ({"queue_bytes": 10}, "hub.queue_bytes: must be between"),
            ({"queue_bytes": 2048, "max_message_size": 4096}, "must not exceed hub.queue_bytes"),
            (
                {"queue_bytes": 4096, "max_message_size": 16, "max_queued_bytes": 2048},
                "hub.queue_bytes: must not exceed hub.max_queued_bytes",
            ),
            ({"max_members_per_topic": 0}, "hub.max_members_per_topic: must be between"),
            ({"max_members_per_address": True}, "hub.max_members_per_address: must be an integer"),
            ({"stats_anonymous": "all"}, 'hub.stats_anonymous: must be "totals", "none" or "full"'),
            ({"stats_interval": 0}, "hub.stats_interval: must be between"),
            ({"enabled": "yes"}, "hub.enabled: must be true or false"),
            ({"stats_token_sha256": "xyz"}, "hub.stats_token_sha256: must be 64 hex digits"),
            ({"tokens": {"a b": {"token_sha256": h}}}, "hub.tokens.a b: invalid token name"),
            ({"tokens": {"a": {}}}, "hub.tokens.a.token_sha256: missing"),
            ({"tokens": {"a": {"token_sha256": h, "x": 1}}}, "hub.tokens.a.x: unknown key"),
            (
                {"tokens": {"a": {"token_sha256": h}, "b": {"token_sha256": h}}},
                "hub.tokens.b.token_sha256: same token as hub.tokens.a",
            ),
            ({"access": {"topics": "x"}}, "hub.access: must be a list"),
            ({"access": [{"send": ["*"]}]}, "hub.access[0].topics: must be a pattern"),
            ({"access": [{"topics": "x"}]}, "hub.access[0]: names neither send nor read"),
            ({"access": [{"topics": "x", "send": ["nobody"]}]}, "'nobody' has no [hub.tokens"),
            ({"access": [{"topics": "x", "read": "camera"}]}, "hub.access[0].read: must be a list"),
            ({"access": [{"topics": "x", "sned": []}]}, "hub.access[0].sned: unknown key"),
        ]
        for hub, expected in cases:
            with self.assertRaises(ConfigError) as caught:
                parse_config({"hub": hub}, "t.toml", SECTIONS)
            message = str(caught.exception)
            self.assertIn(expected, message, hub)
            self.assertNotIn("\n", message)
        with self.assertRaises(ConfigError) as caught:
            parse_config({"hubs": {}}, "t.toml", SECTIONS)
        self.assertIn("[hub]", str(caught.exception))


class RouteTests(unittest.TestCase):
    def test_parse(self) -> None:
        self.assertEqual(parse_hub_path(["lab", "cam"]), HubRoute(Role.BOTH, "lab/cam"))
        self.assertEqual(parse_hub_path(["in", "lab", "cam"]), HubRoute(Role.IN, "lab/cam"))
        self.assertEqual(parse_hub_path(["out", "x"]), HubRoute(Role.OUT, "x"))
        self.assertEqual(parse_hub_path(["in"]), BadRoute("missing topic after 'in/'"))
        self.assertIsInstance(parse_hub_path([]), BadRoute)
        self.assertIsInstance(parse_hub_path(["a", ""]), BadRoute)
        self.assertIsInstance(parse_hub_path(["a b"]), BadRoute)
        self.assertIsInstance(parse_hub_path(["x" * 129]), BadRoute)
        self.assertEqual(parse_hub_path(["x" * 128]), HubRoute(Role.BOTH, "x" * 128))
        self.assertEqual(parse_hub_path(["a.b~c_d-e"]), HubRoute(Role.BOTH, "a.b~c_d-e"))

    def test_paths(self) -> None:
        self.assertEqual(hub_path("lab/cam"), "/hub/lab/cam")
        self.assertEqual(hub_path("cam", Role.OUT, "/x"), "/x/out/cam")
        with self.assertRaises(ValueError):
            hub_path("in/cam")
        with self.assertRaises(ValueError):
            hub_path("bad name", Role.IN)

    @given(st.from_regex(r"[A-Za-z0-9._~-]{1,20}(/[A-Za-z0-9._~-]{1,20}){0,4}", fullmatch=True))
    def test_round_trip(self, topic: str) -> None:
        if not valid_topic(topic) or topic.split("/")[0] in ("in", "out"):
            return
        for role in Role:
            route = parse_hub_path(hub_path(topic, role).split("/")[2:])
            self.assertEqual(route, HubRoute(role, topic))
