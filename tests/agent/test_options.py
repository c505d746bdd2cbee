"""nbbridge-agent's command line."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import TestCase

from nbbridge.agent.tap import Options, makeService
from nbbridge.crypto import PrivateKey, write_private_key
from nbbridge.demo import write_secret
from nbbridge.mux import ChannelLimits


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
        self.assertEqual(sorted(agent.acceptor.services), ["jupyter", "ssh"])  # type: ignore[attr-defined]

    def test_expose_twice_refused(self) -> None:
        e = self.assertRaises(
            usage.UsageError,
            Options().parseOptions,
            self.args("--expose", "a=1", "--expose", "a=2"),
        )
        self.assertIn("given twice", str(e))

    def test_missing_authorized_keys_file(self) -> None:
        os.remove(self.authorized)
        e = self.assertRaises(
            usage.UsageError, Options().parseOptions, self.args("--expose", "a=1")
        )
        self.assertIn("authorized_keys", str(e))

    def test_key_with_open_permissions(self) -> None:
        os.chmod(self.key, 0o644)
        e = self.assertRaises(
            usage.UsageError, Options().parseOptions, self.args("--expose", "a=1")
        )
        self.assertIn("chmod 600", str(e))

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
