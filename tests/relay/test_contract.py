"""Pure pieces: routes, the dial message, bearer headers, endpoint strings, close mapping."""

from __future__ import annotations

import json

from twisted.trial import unittest

from nbbridge.contract import (
    CloseCode,
    Dial,
    Route,
    RouteKind,
    bearer_headers,
    control_path,
    data_path,
    dial_message,
    link_path,
    parse_bearer,
    parse_control_message,
    parse_route,
)
from nbbridge.relay._listen import loopback_problem, uses_tls
from nbbridge.relay._splice import onward_close
from nbbridge.transport import endpoint_string
from nbbridge.websocket import truncate_reason

LINK = "abcdefghijklmnopqrstuvwxyz012345"


class RouteTests(unittest.TestCase):
    def test_paths_and_parse(self) -> None:
        self.assertEqual(control_path("gpu"), "/v1/agents/gpu/control")
        self.assertEqual(link_path("gpu-2.a_b"), "/v1/agents/gpu-2.a_b/link")
        self.assertEqual(data_path("gpu", LINK), f"/v1/agents/gpu/data/{LINK}")
        for path, route in [
            (control_path("gpu"), Route(RouteKind.CONTROL, "gpu")),
            (link_path("gpu"), Route(RouteKind.LINK, "gpu")),
            (data_path("gpu", LINK), Route(RouteKind.DATA, "gpu", LINK)),
        ]:
            self.assertEqual(parse_route(path.split("/")[2:]), route)

    def test_bad_routes(self) -> None:
        for segments in (
            [],
            ["agents"],
            ["agents", "gpu"],
            ["agents", "gpu", "controls"],
            ["agents", "", "control"],
            ["agents", "-gpu", "control"],
            ["agents", "g" * 65, "control"],
            ["agents", "gpu", "data"],
            ["agents", "gpu", "data", "short"],
            ["agents", "gpu", "data", LINK + "!"],
            ["agents", "gpu", "control", ""],
        ):
            self.assertIsNone(parse_route(segments), segments)
        with self.assertRaises(ValueError):
            control_path("../x")
        with self.assertRaises(ValueError):
            data_path("gpu", "x/y")

    def test_dial_message(self) -> None:
        url = data_path("gpu", LINK)
        text = dial_message(LINK, url)
        self.assertEqual(json.loads(text), {"op": "dial", "link": LINK, "url": url})
        self.assertEqual(parse_control_message(text), Dial(LINK, url))
        self.assertEqual(parse_control_message(text.encode()), Dial(LINK, url))

    def test_dial_urls(self) -> None:
        """A dial names the data route of its own link: as a path, or at another relay."""
        for url in (
            f"/v1/agents/gpu/data/{LINK}",
            f"wss://relay2.example.com/v1/agents/gpu/data/{LINK}",
            f"wss://example.com/nbb/v1/agents/gpu/data/{LINK}",
        ):
            self.assertEqual(parse_control_message(dial_message(LINK, url)).url, url)
        for url in (
            f"/v1/agents/gpu/data/{LINK}x",
            f"/v1/agents/gpu/link/{LINK}",
            f"https://relay2.example.com/v1/agents/gpu/data/{LINK}",
            f"//relay2.example.com/v1/agents/gpu/data/{LINK}",
            f"/v1/agents/gpu/data/{LINK}?token=x",
            "/",
        ):
            with self.assertRaises(ValueError, msg=url):
                parse_control_message(dial_message(LINK, url))

    def test_bad_control_messages(self) -> None:
        for payload, problem in [
            ("nope", "not JSON"),
            (b"\xff", "not JSON"),
            ("[]", "not a JSON object"),
            ('{"op": "hello"}', "unknown control op"),
            ('{"op": "dial"}', "valid link id"),
            ('{"op": "dial", "link": "../../x"}', "valid link id"),
            ('{"op": "dial", "link": "%s"}' % ("a" * 32), "data URL"),
        ]:
            with self.assertRaises(ValueError) as caught:
                parse_control_message(payload)
            self.assertIn(problem, str(caught.exception))

    def test_bearer(self) -> None:
        self.assertEqual(bearer_headers("t0k"), {"Authorization": "Bearer t0k"})
        self.assertEqual(parse_bearer({"authorization": "Bearer t0k"}), "t0k")
        self.assertEqual(parse_bearer({"authorization": "bearer  t0k "}), "t0k")
        self.assertIsNone(parse_bearer({"authorization": "Basic dXNlcjpwYXNz"}))
        self.assertIsNone(parse_bearer({"authorization": "Bearer "}))
        self.assertIsNone(parse_bearer({}))


class ListenTests(unittest.TestCase):
    def test_bare_port(self) -> None:
        self.assertEqual(endpoint_string("8765"), "tcp:8765:interface=127.0.0.1")
        self.assertEqual(endpoint_string("unix:/x"), "unix:/x")

    def test_loopback(self) -> None:
        for description in (
            "tcp:8765:interface=127.0.0.1",
            "tcp:0:interface=127.0.0.2",
            "tcp:0:interface=localhost",
            r"tcp6:0:interface=\:\:1",
            "tcp:8765:127.0.0.1",
            "ssl:443:privateKey=k.pem:interface=127.0.0.1",
            "unix:/run/nbbridge/relay.sock",
        ):
            self.assertIsNone(loopback_problem(description), description)

    def test_not_loopback(self) -> None:
        for description, problem in [
            ("tcp:8765", "every interface"),
            ("tcp:8765:interface=0.0.0.0", "not a loopback"),
            ("tcp:8765:interface=192.168.1.2", "not a loopback"),
            ("tcp6:8765", "every interface"),
            (r"tcp6:8765:interface=\:\:", "not a loopback"),
            ("ssl:443:privateKey=k.pem", "every interface"),
            ("systemd:domain=INET:index=0", "cannot tell"),
        ]:
            found = loopback_problem(description)
            self.assertIsNotNone(found, description)
            self.assertIn(problem, found or "")

    def test_tls(self) -> None:
        self.assertTrue(uses_tls("ssl:443:privateKey=k"))
        self.assertFalse(uses_tls("tcp:80"))


class CloseMappingTests(unittest.TestCase):
    def test_onward_close(self) -> None:
        self.assertEqual(onward_close(4000, "bye"), (4000, "bye"))
        self.assertEqual(onward_close(CloseCode.TOO_BIG, "big"), (4413, "big"))
        self.assertEqual(onward_close(1000, None), (1000, "peer closed the link"))
        self.assertEqual(onward_close(1006, "x"), (1001, "peer connection lost"))
        self.assertEqual(onward_close(None, None), (1001, "peer connection lost"))
        self.assertEqual(onward_close(1001, "x"), (1001, "peer connection lost"))

    def test_truncate_reason(self) -> None:
        self.assertEqual(truncate_reason("short"), b"short")
        long = "é" * 100
        cut = truncate_reason(long)
        self.assertLessEqual(len(cut), 123)
        self.assertEqual(cut.decode("utf-8"), "é" * 61)


class PairingContractTests(unittest.TestCase):
    def test_routes(self) -> None:
        from nbbridge.contract import pair_join_path, pair_open_path

        for path, route in [
            (pair_open_path("gpu"), Route(RouteKind.PAIR_OPEN, "gpu")),
            (pair_join_path(7), Route(RouteKind.PAIR_JOIN, "", nameplate=7)),
            (pair_join_path(999_999), Route(RouteKind.PAIR_JOIN, "", nameplate=999_999)),
        ]:
            self.assertEqual(parse_route(path.split("/")[2:]), route)
        for segments in (
            ["pair", "0"],
            ["pair", "07"],
            ["pair", "1000000"],
            ["pair", "-1"],
            ["pair", "٣"],
            ["pair"],
            ["agents", "../x", "pair"],
        ):
            self.assertIsNone(parse_route(segments), segments)
        self.assertRaises(ValueError, pair_join_path, 0)

    def test_messages(self) -> None:
        from nbbridge.contract import (
            Joined,
            Nameplate,
            joined_message,
            nameplate_message,
            parse_pair_message,
        )

        self.assertEqual(parse_pair_message(nameplate_message(7, 300)), Nameplate(7, 300.0))
        # A relay behind a load balancer names itself; an older one does not (None).
        self.assertEqual(
            parse_pair_message(nameplate_message(7, 300, "wss://lb.example/r1")),
            Nameplate(7, 300.0, "wss://lb.example/r1"),
        )
        self.assertNotIn("relay", nameplate_message(7, 300))
        self.assertEqual(parse_pair_message(joined_message()), Joined())
        for bad in (
            '{"op": "nameplate", "nameplate": 0, "ttl": 1}',
            '{"op": "nameplate", "nameplate": true, "ttl": 1}',
            '{"op": "nameplate", "nameplate": 7, "ttl": 1, "relay": "http://x/"}',
            '{"op": "nameplate", "nameplate": 7, "ttl": 1, "relay": "wss://x/ rm -rf"}',
            '{"op": "nameplate", "nameplate": 7, "ttl": 1, "relay": 7}',
            '{"op": "nameplate", "nameplate": 3, "ttl": -1}',
            "[]",
            "x",
            '{"op": 1}',
        ):
            self.assertRaises(ValueError, parse_pair_message, bad)
