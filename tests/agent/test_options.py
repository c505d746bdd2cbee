"""nbbridge-agent's command line."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nbbridge.agent.tap import Options, connect_retries, makeService
from nbbridge.crypto import PrivateKey, write_private_key
from nbbridge.demo import write_secret
from nbbridge.mux import DEFAULT_CONNECTS_IN_FLIGHT, LOOPBACK_RETRIES, ChannelLimits, PacedEndpoint


def refused(test: TestCase, args: list[str]) -> str:
    """The one line a refused start-up exits with (twistd prints it, status 1)."""
    with test.assertRaises(SystemExit) as caught:
        Options().parseOptions(args)
    message = str(caught.exception.code)
    test.assertTrue(message.startswith("nbbridge-agent: "), message)
    test.assertNotIn("\n", message)
    return message


class AgentOptionsTests(TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.key = os.path.join(self.dir, "agent.key")
        write_private_key(self.key, PrivateKey.generate())
        self.authorized = os.path.join(self.dir, "authorized_keys")
        with open(self.authorized, "w") as f:
            f.write(f"# laptops\n{PrivateKey.generate().public_key.to_text()} laptop\n")
        self.token = str(write_secret(Path(self.dir, "token"), "s3cret"))

    def args(self, *extra: str) -> list[str]:
        return [
            "--relay",
            "ws://127.0.0.1:8765",
            "--name",
            "gpu",
            "--key",
            self.key,
            "--authorized-keys",
            self.authorized,
            "--token-file",
            self.token,
            *extra,
        ]

    def test_expose(self) -> None:
        o = Options()
        o.parseOptions(self.args("--expose", "jupyter=tcp:127.0.0.1:8888", "--expose", "ssh=22"))
        self.assertEqual(
            o["expose"], [("jupyter", "tcp:127.0.0.1:8888"), ("ssh", "tcp:127.0.0.1:22")]
        )
        agent = makeService(o)
        services = agent.acceptor.services  # type: ignore[attr-defined]
        self.assertEqual(sorted(services), ["jupyter", "ssh"])
        # A burst of opens never floods a service's listen queue (bench/burst.py).
        for endpoint in services.values():
            self.assertIsInstance(endpoint, PacedEndpoint)
            self.assertEqual(endpoint.limit, DEFAULT_CONNECTS_IN_FLIGHT)
            # Both are on this machine: a connect whose SYN was dropped is made again.
            self.assertEqual(endpoint.retry_after, LOOPBACK_RETRIES)

    def test_expose_twice_refused(self) -> None:
        e = self.assertRaises(
            usage.UsageError,
            Options().parseOptions,
            self.args("--expose", "a=1", "--expose", "a=2"),
        )
        self.assertIn("given twice", str(e))

    def test_missing_authorized_keys_file(self) -> None:
        os.remove(self.authorized)
        self.assertIn("authorized_keys", refused(self, self.args("--expose", "a=1")))

    def test_key_with_open_permissions(self) -> None:
        os.chmod(self.key, 0o644)
        self.assertIn("chmod 600", refused(self, self.args("--expose", "a=1")))

    def test_unreadable_ca_refused_at_start_up(self) -> None:
        """One line at start-up, not a traceback from makeService (issue 15)."""
        args = self.args("--expose", "a=1")
        args[1] = "wss://relay.example.com"
        missing = os.path.join(self.dir, "missing.pem")
        self.assertEqual(
            refused(self, [*args, "--ca", missing]),
            f"nbbridge-agent: --ca {missing}: cannot read it: No such file or directory",
        )

    def test_channel_limits(self) -> None:
        """--max-channels and --max-pending-opens bound every session the agent makes."""
        o = Options()
        o.parseOptions(
            self.args("--expose", "ssh=22", "--max-channels", "8", "--max-pending-opens", "2")
        )
        agent = makeService(o)
        self.assertEqual(agent.channel_limits, ChannelLimits(8, 2))  # type: ignore[attr-defined]
        defaults = Options()
        defaults.parseOptions(self.args("--expose", "ssh=22"))
        self.assertEqual(defaults["channel_limits"], ChannelLimits())
        for bad in ("0", "-3"):
            e = self.assertRaises(
                usage.UsageError,
                Options().parseOptions,
                self.args("--expose", "ssh=22", "--max-channels", bad),
            )
            self.assertIn("--max-channels must be a positive number", str(e))

    def test_resume_grace(self) -> None:
        """--resume-grace: how long the agent keeps a session whose link was lost (0: off)."""
        o = Options()
        o.parseOptions(self.args("--expose", "ssh=22", "--resume-grace", "30"))
        agent = makeService(o)
        self.assertEqual(agent.resume_grace, 30)  # type: ignore[attr-defined]
        defaults = Options()
        defaults.parseOptions(self.args("--expose", "ssh=22"))
        self.assertEqual(defaults["resume-grace"], 600)
        e = self.assertRaises(
            usage.UsageError,
            Options().parseOptions,
            self.args("--expose", "ssh=22", "--resume-grace", "-1"),
        )
        self.assertIn("--resume-grace", str(e))

    def test_connects_in_flight(self) -> None:
        """--connects-in-flight bounds the connects to each exposed service (its backlog)."""
        o = Options()
        o.parseOptions(self.args("--expose", "ssh=22", "--connects-in-flight", "4"))
        services = makeService(o).acceptor.services  # type: ignore[attr-defined]
        self.assertEqual(services["ssh"].limit, 4)
        defaults = Options()
        defaults.parseOptions(self.args("--expose", "ssh=22"))
        self.assertEqual(defaults["connects-in-flight"], DEFAULT_CONNECTS_IN_FLIGHT)
        for bad in ("0", "-2"):
            e = self.assertRaises(
                usage.UsageError,
                Options().parseOptions,
                self.args("--expose", "ssh=22", "--connects-in-flight", bad),
            )
            self.assertIn("--connects-in-flight must be a whole number", str(e))


class AgentConfigTests(TestCase):
    def test_config_file_alone(self) -> None:
        """`twistd -n nbbridge-agent --config agent.toml`: files beside it, named relatively."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        write_private_key(os.path.join(directory, "agent.key"), PrivateKey.generate())
        write_secret(Path(directory, "agent.token"), "s3cret")
        client = PrivateKey.generate().public_key
        with open(os.path.join(directory, "authorized_keys"), "w") as f:
            f.write(f"{client.to_text()} laptop\n")
        config = os.path.join(directory, "agent.toml")
        with open(config, "w") as f:
            f.write(
                'relay = "ws://127.0.0.1:8765"\nname = "gpu"\nkey = "agent.key"\n'
                'token_file = "agent.token"\nauthorized_keys = "authorized_keys"\n'
                'expose = ["jupyter=8888", "ssh=22"]\nmax_pending_opens = 3\n'
                "resume_grace = 120\nconnects_in_flight = 5\n"
            )
        self.patch(Options, "default_config", os.path.join(directory, "absent.toml"))
        o = Options()
        o.parseOptions(["--config", config])
        self.assertEqual(o["authorized-keys"], os.path.join(directory, "authorized_keys"))
        self.assertIn(client, o["authorized"])
        agent = makeService(o)
        services = agent.acceptor.services  # type: ignore[attr-defined]
        self.assertEqual(sorted(services), ["jupyter", "ssh"])
        # A burst of opens never floods a service's listen queue (bench/burst.py).
        for endpoint in services.values():
            self.assertIsInstance(endpoint, PacedEndpoint)
            self.assertEqual(endpoint.limit, 5)
        self.assertEqual(agent.channel_limits.max_pending_accepts, 3)  # type: ignore[attr-defined]
        self.assertEqual(agent.resume_grace, 120)  # type: ignore[attr-defined]
        # The systemd unit passes its credentials as flags: they win over the file.
        other = os.path.join(directory, "other.key")
        write_private_key(other, PrivateKey.generate())
        o = Options()
        o.parseOptions(["--config", config, "--key", other])
        self.assertEqual(o["key"], other)

    def test_default_config_is_etc(self) -> None:
        self.assertEqual(Options.default_config, "/etc/nbbridge/agent.toml")
        with open(self.mktemp(), "w") as f:
            f.write('forward = ["x=1"]\n')
        e = refused(self, ["--config", f.name])
        self.assertIn("unknown key 'forward'", e)  # the client's key, not the agent's


class ConnectRetriesTests(SynchronousTestCase):
    def test_only_connects_to_this_machine_are_made_again(self) -> None:
        for description, retries in [
            ("tcp:127.0.0.1:8888", LOOPBACK_RETRIES),
            ("tcp:host=127.0.1.5:port=8888", LOOPBACK_RETRIES),
            ("tcp:localhost:8888", LOOPBACK_RETRIES),
            ("tcp:host=\\:\\:1:port=8888", LOOPBACK_RETRIES),
            ("tcp:192.0.2.1:8888", ()),
            ("tcp:gpu.example:8888", ()),
            ("unix:/run/x.sock", ()),
        ]:
            self.assertEqual(connect_retries(description), retries, description)
