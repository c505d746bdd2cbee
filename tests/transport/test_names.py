"""Command-line shorthands and relay URLs: pure parsing, no sockets."""

from __future__ import annotations

from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nbbridge.transport import (
    RelayURL,
    check_service_name,
    endpoint_string,
    is_loopback_host,
    listen_endpoint_string,
    parse_mapping,
    parse_relay_url,
)


class EndpointStringTests(SynchronousTestCase):
    def test_bare_port_means_loopback(self) -> None:
        self.assertEqual(endpoint_string("8080"), "tcp:8080:interface=127.0.0.1")
        self.assertEqual(endpoint_string(" 22 "), "tcp:22:interface=127.0.0.1")

    def test_other_strings_unchanged(self) -> None:
        for text in (
            "tcp:8080",
            "tcp:8888:interface=0.0.0.0",
            "ssl:443:privateKey=k.pem",
            "unix:/run/x.sock",
            "tcp:127.0.0.1:8888",
            "systemd:domain=INET:index=0",
            "",
        ):
            self.assertEqual(endpoint_string(text), text)

    def test_non_ascii_digits_are_not_ports(self) -> None:
        # "٨٠" (Arabic-Indic digits) is str.isdigit() but not a port anyone typed on purpose.
        self.assertEqual(endpoint_string("٨٠"), "٨٠")


class ListenEndpointStringTests(SynchronousTestCase):
    def test_tcp_and_tls_listeners_get_a_deep_queue(self) -> None:
        for text, expected in (
            ("8080", "tcp:8080:interface=127.0.0.1:backlog=1024"),
            ("tcp:8765:interface=0.0.0.0", "tcp:8765:interface=0.0.0.0:backlog=1024"),
            ("tcp6:8765:interface=\\:\\:1", "tcp6:8765:interface=\\:\\:1:backlog=1024"),
            ("ssl:443:privateKey=k.pem", "ssl:443:privateKey=k.pem:backlog=1024"),
        ):
            self.assertEqual(listen_endpoint_string(text), expected)

    def test_a_given_backlog_and_other_kinds_are_kept(self) -> None:
        for text in (
            "tcp:8765:backlog=10",
            "unix:/run/x.sock:backlog=10",
            "systemd:domain=INET:index=0",
        ):
            self.assertEqual(listen_endpoint_string(text), text)

    def test_a_unix_listener_gets_a_deep_queue_too(self) -> None:
        """A UNIX socket's full queue refuses at once (EAGAIN to a non-blocking connect, so
        nginx in front of the relay answers 502), where a TCP one only drops the SYN."""
        for text, expected in (
            ("unix:/run/x.sock", "unix:/run/x.sock:backlog=1024"),
            ("unix:/run/x.sock:mode=600", "unix:/run/x.sock:mode=600:backlog=1024"),
            ("unix:/run/x.sock:600:10", "unix:/run/x.sock:600:10"),
        ):
            self.assertEqual(listen_endpoint_string(text), expected)

    def test_a_backlog_given_by_position_is_kept(self) -> None:
        """Twisted takes fields by position too (tcp: port, interface, backlog; tcp6: port,
        backlog, interface; ssl: its sixth): a second backlog made a valid string an error
        ("got multiple values for argument 'backlog'")."""
        for text in (
            "tcp:8765:127.0.0.1:100",
            "tcp6:8765:100:\\:\\:1",
            "ssl:443:k.pem:c.pem:SSLv23_METHOD:127.0.0.1:100",
        ):
            self.assertEqual(listen_endpoint_string(text), text)
        for text in ("tcp:8765:127.0.0.1:100", "tcp6:8765:100:\\:\\:1"):
            endpoint = serverFromString(Clock(), listen_endpoint_string(text))  # type: ignore[no-untyped-call]
            self.assertEqual(endpoint._backlog, 100)

    def test_backlog_only_as_a_field_of_its_own(self) -> None:
        """'backlog=' inside another field's value is not a backlog; the kind is read as
        Twisted reads it (tcp6's parser takes any case)."""
        for text, expected in (
            (
                "ssl:443:privateKey=/srv/backlog=2/k.pem",
                "ssl:443:privateKey=/srv/backlog=2/k.pem:backlog=1024",
            ),
            ("TCP6:8765", "TCP6:8765:backlog=1024"),
        ):
            self.assertEqual(listen_endpoint_string(text), expected)

    def test_a_trailing_backslash_is_left_for_twisted_to_refuse(self) -> None:
        """Appended after an unpaired backslash, ':backlog=1024' became part of the last
        value (here an interface named '127.0.0.1:backlog=1024'), far from what was typed."""
        text = "tcp:8765:interface=127.0.0.1\\"
        self.assertEqual(listen_endpoint_string(text), text)


class MappingTests(SynchronousTestCase):
    def test_splits_at_first_equals(self) -> None:
        self.assertEqual(
            parse_mapping("jupyter=tcp:8888:interface=127.0.0.1"),
            ("jupyter", "tcp:8888:interface=127.0.0.1"),
        )
        self.assertEqual(parse_mapping("ssh=22"), ("ssh", "22"))
        self.assertEqual(parse_mapping("a.b_c-9=unix:/x"), ("a.b_c-9", "unix:/x"))

    def test_missing_equals(self) -> None:
        e = self.assertRaises(ValueError, parse_mapping, "jupyter")
        self.assertIn("SERVICE=ENDPOINT", str(e))

    def test_missing_endpoint(self) -> None:
        e = self.assertRaises(ValueError, parse_mapping, "jupyter=")
        self.assertIn("missing endpoint", str(e))

    def test_bad_service_names(self) -> None:
        for text in ("=8080", "bad name=1", "x/y=1", "ü=1", "a" * 65 + "=1", "a:b=1"):
            e = self.assertRaises(ValueError, parse_mapping, text)
            self.assertIn("invalid service name", str(e))
            self.assertIn("A-Z a-z 0-9 . _ -", str(e))

    def test_longest_name(self) -> None:
        self.assertEqual(check_service_name("a" * 64), "a" * 64)


class RelayURLTests(SynchronousTestCase):
    def test_wss_defaults(self) -> None:
        url = parse_relay_url("wss://relay.example.com", insecure=False)
        self.assertEqual(url, RelayURL("wss", "relay.example.com", 443, ""))
        self.assertTrue(url.secure)
        self.assertEqual(
            url.url_for("/v1/agents/gpu/link"), "wss://relay.example.com/v1/agents/gpu/link"
        )
        self.assertEqual(str(url), "wss://relay.example.com/")

    def test_port_and_base_path(self) -> None:
        url = parse_relay_url("wss://Relay.Example.com:8443/nbbridge/", insecure=False)
        self.assertEqual((url.host, url.port, url.path), ("relay.example.com", 8443, "/nbbridge"))
        self.assertEqual(
            url.url_for("/v1/agents/gpu/control"),
            "wss://relay.example.com:8443/nbbridge/v1/agents/gpu/control",
        )

    def test_ws_default_port(self) -> None:
        self.assertEqual(parse_relay_url("ws://127.0.0.1", False).port, 80)

    def test_ipv6(self) -> None:
        url = parse_relay_url("ws://[::1]:8765", insecure=False)
        self.assertEqual((url.host, url.port), ("::1", 8765))
        self.assertEqual(url.url_for("/status"), "ws://[::1]:8765/status")

    def test_ws_to_remote_host_refused(self) -> None:
        e = self.assertRaises(ValueError, parse_relay_url, "ws://relay.example.com", False)
        self.assertEqual(
            str(e),
            "refusing unencrypted ws:// to relay.example.com; use wss:// or pass --insecure",
        )
        self.assertRaises(ValueError, parse_relay_url, "ws://10.0.0.5:8765", False)
        self.assertRaises(ValueError, parse_relay_url, "ws://localhost.evil.com", False)

    def test_ws_to_remote_host_with_insecure(self) -> None:
        url = parse_relay_url("ws://relay.example.com:8765", insecure=True)
        self.assertEqual(url, RelayURL("ws", "relay.example.com", 8765, ""))
        self.assertFalse(url.secure)

    def test_ws_to_loopback_allowed(self) -> None:
        for text in (
            "ws://127.0.0.1:8765",
            "ws://127.1.2.3:8765",
            "ws://localhost:8765",
            "ws://LOCALHOST.:8765",
            "ws://[::1]:8765",
            "ws://[::ffff:127.0.0.1]:8765",
        ):
            self.assertFalse(parse_relay_url(text, insecure=False).secure, text)

    def test_other_schemes_refused(self) -> None:
        for text in ("http://relay.example.com", "https://relay.example.com", "relay.example.com"):
            e = self.assertRaises(ValueError, parse_relay_url, text, False)
            self.assertIn("wss://", str(e))

    def test_credentials_refused(self) -> None:
        e = self.assertRaises(
            ValueError, parse_relay_url, "wss://user:tok@relay.example.com", False
        )
        self.assertIn("--token-file", str(e))
        self.assertNotIn("tok@", str(e))

    def test_query_refused(self) -> None:
        self.assertRaises(ValueError, parse_relay_url, "wss://relay.example.com/?token=x", False)

    def test_bad_port(self) -> None:
        self.assertRaises(ValueError, parse_relay_url, "wss://relay.example.com:99999", False)
        self.assertRaises(ValueError, parse_relay_url, "wss://relay.example.com:0", False)
        self.assertRaises(ValueError, parse_relay_url, "wss://relay.example.com:x", False)

    def test_no_host(self) -> None:
        self.assertRaises(ValueError, parse_relay_url, "wss:///path", False)

    def test_route_must_be_absolute(self) -> None:
        url = parse_relay_url("wss://relay.example.com", False)
        self.assertRaises(ValueError, url.url_for, "v1/agents")

    def test_is_loopback_host(self) -> None:
        self.assertTrue(is_loopback_host("127.0.0.1"))
        self.assertTrue(is_loopback_host("[::1]"))
        self.assertFalse(is_loopback_host("0.0.0.0"))
        self.assertFalse(is_loopback_host("example.com"))
