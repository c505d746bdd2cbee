"""nbbridge-client's command line: what it accepts, what it refuses, and how it says so."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import TestCase

from nbbridge.client.tap import Options, makeService
from nbbridge.crypto import PrivateKey, write_private_key
from nbbridge.demo import write_secret


class ClientOptionsTests(TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.key = os.path.join(self.dir, "client.key")
        write_private_key(self.key, PrivateKey.generate())
        self.agent_key = PrivateKey.generate().public_key.to_text()
        self.token = str(write_secret(Path(self.dir, "token"), "s3cret"))

    def args(self, *extra: str) -> list[str]:
        return [
            "--relay",
            "ws://127.0.0.1:8765",
            "--agent",
            "gpu",
            "--agent-key",
            self.agent_key,
            "--key",
            self.key,
            "--token-file",
            self.token,
            *extra,
        ]

    def test_forwards(self) -> None:
        o = Options()
        o.parseOptions(self.args("--forward", "jupyter=8080", "--forward", "ssh=unix:/tmp/s"))
        self.assertEqual(
            o["forward"],
            [
                ("jupyter", "tcp:8080:interface=127.0.0.1:backlog=1024"),
                ("ssh", "unix:/tmp/s:backlog=1024"),
            ],
        )
        self.assertEqual(o["token"], "s3cret")
        service = makeService(o)
        kinds = sorted(type(child).__name__ for child in service)
        # the link, two forwards, the status page, and giving memory back when idle (glibc)
        self.assertEqual(
            [k for k in kinds if k != "IdleTrim"],
            ["AgentLink", "ForwardService", "ForwardService", "StatusService"],
        )
        self.assertEqual(o["status"], "tcp:8767:interface=127.0.0.1")

    def test_status_endpoint(self) -> None:
        for given, expected in (
            ("9000", "tcp:9000:interface=127.0.0.1"),
            ("tcp6:9000:interface=\\:\\:1", "tcp6:9000:interface=\\:\\:1"),
            ("unix:/run/user/1000/nbb.sock", "unix:/run/user/1000/nbb.sock"),
            ("off", None),
        ):
            o = Options()
            o.parseOptions(self.args("--forward", "ssh=2222", "--status", given))
            self.assertEqual(o["status"], expected, given)
        o = Options()
        o.parseOptions(self.args("--forward", "ssh=2222", "--status", "off"))
        kinds = [type(child).__name__ for child in makeService(o)]
        self.assertNotIn("StatusService", kinds)

    def test_status_off_loopback_refused(self) -> None:
        for given in ("tcp:9000:interface=0.0.0.0", "tcp:9000", "tcp6:9000:interface=\\:\\:"):
            e = self.assertRaises(
                usage.UsageError,
                Options().parseOptions,
                self.args("--forward", "ssh=2222", "--status", given),
            )
            self.assertIn(f"--status {given}", str(e))

    def test_needs_a_forward(self) -> None:
        e = self.assertRaises(usage.UsageError, Options().parseOptions, self.args())
        self.assertIn("--forward", str(e))

    def test_bad_agent_key(self) -> None:
        args = self.args("--forward", "jupyter=8080")
        k = self.agent_key
        typo = k[:10] + ("b" if k[10] == "a" else "a") + k[11:]
        args[args.index(k)] = typo
        e = self.assertRaises(usage.UsageError, Options().parseOptions, args)
        self.assertIn("checksum", str(e))

    def test_plain_ws_to_remote_relay_refused(self) -> None:
        args = self.args("--forward", "jupyter=8080")
        args[1] = "ws://relay.example.com"
        e = self.assertRaises(usage.UsageError, Options().parseOptions, args)
        self.assertIn("--insecure", str(e))
        o = Options()
        o.parseOptions([*args, "--insecure"])

    def test_token_from_environment(self) -> None:
        args = self.args("--forward", "jupyter=8080")
        i = args.index("--token-file")
        del args[i : i + 2]
        self.patch(os, "environ", {"NBBRIDGE_TOKEN": "from-env"})
        o = Options()
        o.parseOptions(args)
        self.assertEqual(o["token"], "from-env")
        self.patch(os, "environ", {})
        self.assertIn("NBBRIDGE_TOKEN", refused(self, args))

    def test_world_readable_token_refused(self) -> None:
        os.chmod(self.token, 0o644)
        self.assertIn("chmod 600", refused(self, self.args("--forward", "j=1")))

    def test_unreadable_ca_refused_at_start_up(self) -> None:
        """A --ca that cannot be read ends the start-up with one line, not failed attempts."""
        args = self.args("--forward", "j=1")
        args[1] = "wss://relay.example.com"
        missing = os.path.join(self.dir, "missing.pem")
        self.assertEqual(
            refused(self, [*args, "--ca", missing]),
            f"nbbridge-client: --ca {missing}: cannot read it: No such file or directory",
        )
        self.assertEqual(
            refused(self, [*args, "--ca", self.dir]),
            f"nbbridge-client: --ca {self.dir}: cannot read it: Is a directory",
        )

    def test_bad_service_name(self) -> None:
        e = self.assertRaises(
            usage.UsageError, Options().parseOptions, self.args("--forward", "no spaces=80")
        )
        self.assertIn("--forward", str(e))


def refused(test: TestCase, args: list[str], options: type[Options] = Options) -> str:
    """The one line a refused start-up exits with (twistd prints it, status 1)."""
    with test.assertRaises(SystemExit) as caught:
        options().parseOptions(args)
    message = str(caught.exception.code)
    test.assertTrue(message.startswith(f"{options.command}: "), message)
    test.assertNotIn("\n", message)
    return message


class CredentialsDirectoryTests(TestCase):
    def test_systemd_credentials_are_trusted(self) -> None:
        """Files under $CREDENTIALS_DIRECTORY pass even when mode bits look open."""
        from nbbridge._secrets import read_secret
        from nbbridge.crypto import KeyFileError, load_private_key

        directory = self.mktemp()
        os.makedirs(directory)
        key = os.path.join(directory, "client.key")
        write_private_key(key, PrivateKey.generate())
        os.chmod(key, 0o644)
        token = os.path.join(directory, "token")
        with open(token, "w") as f:
            f.write("t\n")
        os.chmod(token, 0o644)
        self.patch(os, "environ", {"CREDENTIALS_DIRECTORY": directory})
        load_private_key(key)
        self.assertEqual(read_secret(token, "NBBRIDGE_TOKEN"), "t")
        self.patch(os, "environ", {})
        self.assertRaises(KeyFileError, load_private_key, key)
