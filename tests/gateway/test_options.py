"""The original's command line, parsed: names, defaults, --local_session's two values."""

from __future__ import annotations

import io
import os

from twisted.internet import reactor
from twisted.logger import Logger, LogLevel
from twisted.python import usage
from twisted.trial.unittest import TestCase

from nbbridge.gateway._logging import level_for, log_observer
from nbbridge.gateway._target import AgentTarget, parse_target
from nbbridge.gateway.tap import Options, listen_endpoint, makeService, take_local_sessions
from nbbridge.store import PASSWORD_ENV


class OptionsTests(TestCase):
    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults(self) -> None:
        options = self.parse("8080")
        self.assertEqual(options["ws_server_port"], 8080)
        self.assertEqual(options["http_port"], 9090)
        self.assertEqual(options["timeout"], 300)
        self.assertEqual(options["interface"], "127.0.0.1")
        self.assertEqual(options["client_hostname"], "localhost")
        self.assertEqual(options["local_session"], [])

    def test_original_command_line(self) -> None:
        options = self.parse(
            "--http_directory", "/srv/www", "--http_port", "9091",
            "--client_hostname", "vnc.local", "--client_port", "5901",
            "--timeout", "60", "--local_session", "desktop", "2",
            "--local_session", "app:xterm -fa Mono", "1",
            "--verbose", "2", "--log_file", "/tmp/gw.log", "8081",
        )  # fmt: skip
        self.assertEqual(options["local_session"], [("desktop", 2), ("app:xterm -fa Mono", 1)])
        self.assertEqual(options["client_port"], 5901)
        self.assertEqual([s.name for s in options["services"]], ["desktop", "xterm"])

    def test_local_session_needs_count(self) -> None:
        with self.assertRaises(usage.UsageError):
            take_local_sessions(["--local_session", "desktop"])
        with self.assertRaises(usage.UsageError):
            self.parse("--local_session", "desktop", "x", "8080")

    def test_bad_port(self) -> None:
        with self.assertRaises(usage.UsageError):
            self.parse("eighty")

    def test_target(self) -> None:
        self.assertEqual(parse_target("agent:gpu/vnc"), AgentTarget("gpu", "vnc"))
        for bad in ("gpu/vnc", "agent:gpu", "agent:/vnc", "tcp:1/2"):
            with self.assertRaises(ValueError):
                parse_target(bad)
        with self.assertRaises(usage.UsageError):
            self.parse("--target", "agent:gpu/vnc", "8080")  # no relay, key, agent key

    def test_listen_endpoint(self) -> None:
        self.assertEqual(
            listen_endpoint(8080, "::1", None, None), r"tcp:8080:interface=\:\:1:backlog=1024"
        )
        self.assertEqual(
            listen_endpoint(443, "127.0.0.1", "/etc/c.pem", "/etc/k.pem"),
            "ssl:443:interface=127.0.0.1:privateKey=/etc/k.pem:certKey=/etc/c.pem",
        )

    def test_store_credentials(self) -> None:
        """The Redis password comes from a file (or the environment), never from the URL."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("s3cret\n")
        self.patch(os, "environ", {})
        options = self.parse("--store", "redis://127.0.0.1/0", "--store-password-file", path, "1")
        self.assertEqual(options["store_password"], "s3cret")
        self.patch(os, "environ", {PASSWORD_ENV: "from-env"})
        self.assertEqual(
            self.parse("--store", "redis://127.0.0.1/0", "1")["store_password"], "from-env"
        )
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--store", "redis://user:hunter2@127.0.0.1/0", "1")
        self.assertNotIn("hunter2", str(caught.exception))
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--store", "redis://127.0.0.1/0", "--store-ca-file", path, "1")
        self.assertIn("rediss://", str(caught.exception))
        with open(path, "w") as f:
            f.write("")
        with self.assertRaises(SystemExit) as exited:
            self.parse("--store", "redis://127.0.0.1/0", "--store-password-file", path, "1")
        self.assertIn("is empty", str(exited.exception))
        with open(path, "w") as f:
            f.write("not a certificate\n")
        options = self.parse("--store", "rediss://127.0.0.1/0", "--store-ca-file", path, "1")
        with self.assertRaises(SystemExit) as exited:
            makeService(options, reactor)
        self.assertIn("--store-ca-file", str(exited.exception))


class LoggingTests(TestCase):
    def test_levels(self) -> None:
        self.assertEqual(level_for(0), LogLevel.warn)
        self.assertEqual(level_for(1), LogLevel.info)
        self.assertEqual(level_for(5), LogLevel.debug)

    def test_filter(self) -> None:
        stream = io.StringIO()
        log = Logger(observer=log_observer(1, stream))
        log.debug("hidden")
        log.info("shown {x}", x=1)
        self.assertNotIn("hidden", stream.getvalue())
        self.assertIn("shown 1", stream.getvalue())


class AccessTests(TestCase):
    """Who may call the REST API: loopback freely, elsewhere only with a token."""

    def test_rules(self) -> None:
        from nbbridge.gateway._users import Access, User, bearer_of, token_hash

        access = Access("admin-secret", (User("ann", token_hash("t-ann"), frozenset({"vis"})),))
        self.assertEqual(access.caller("127.0.0.1", None).admin, True)  # type: ignore[union-attr]
        self.assertEqual(access.caller("::1", None).name, "loopback")  # type: ignore[union-attr]
        self.assertIsNone(access.caller("192.0.2.7", None))
        self.assertIsNone(access.caller("192.0.2.7", "wrong"))
        ann = access.caller("192.0.2.7", "t-ann")
        self.assertEqual((ann.name, ann.groups, ann.admin), ("ann", frozenset({"vis"}), False))  # type: ignore[union-attr]
        self.assertTrue(access.caller("192.0.2.7", "admin-secret").admin)  # type: ignore[union-attr]
        self.assertIsNone(Access().caller("192.0.2.7", "anything"))
        self.assertEqual(bearer_of("Bearer  abc "), "abc")
        self.assertIsNone(bearer_of("Basic abc"))
