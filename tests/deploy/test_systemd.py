"""The shipped systemd units: systemd-analyze accepts them, they are sandboxed, they keep
secrets off the command line, and their command lines parse with the daemons' real options.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from pathlib import Path

from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests._tools import skip_unavailable

from ._units import SYSTEMD, exec_start, materialize, plugin_args, read_unit

SYSTEM_UNITS = ("nbbridge-relay.service", "nbbridge-agent.service")
USER_UNITS = ("nbbridge-client.service",)
INSTALLED_TWISTD = "/opt/nbbridge/bin/twistd"
# The twistd of the environment running the tests: an executable that exists, so that
# `systemd-analyze verify` (which checks ExecStart's binary) can judge the rest of the unit.
LOCAL_TWISTD = str(Path(sys.executable).parent / "twistd")

# Words systemd uses when it ignores or rejects part of a unit.
_COMPLAINTS = ("unknown", "ignoring", "invalid", "failed", "not executable", "bad ", "error")


class VerifyTests(TestCase):
    """`systemd-analyze verify` on a copy of each unit whose ExecStart binary exists."""

    def setUp(self) -> None:
        self.analyze = shutil.which("systemd-analyze")
        if self.analyze is None:
            skip_unavailable("systemd-analyze not found: apt-get install systemd (.ci/run does)")
        if not os.access(LOCAL_TWISTD, os.X_OK):
            skip_unavailable(f"no twistd next to {sys.executable}")

    async def _verify(self, name: str, user: bool) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        text = (SYSTEMD / name).read_text()
        self.assertIn(INSTALLED_TWISTD, text)
        copy = os.path.join(directory, name)
        with open(copy, "w") as f:
            f.write(text.replace(INSTALLED_TWISTD, LOCAL_TWISTD))
        env = dict(os.environ)
        args = ["verify", copy]
        if user:
            # A user manager needs a runtime directory, even for an offline verify.
            runtime = os.path.join(directory, "runtime")
            os.makedirs(runtime, mode=0o700)
            env["XDG_RUNTIME_DIR"] = runtime
            args.insert(0, "--user")
        out, err, code = await getProcessOutputAndValue(self.analyze, args, env=env)
        output = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, f"systemd-analyze {' '.join(args)}:\n{output}")
        complaints = [
            line
            for line in output.splitlines()
            if name in line and any(word in line.lower() for word in _COMPLAINTS)
        ]
        self.assertEqual(complaints, [], output)

    async def test_relay(self) -> None:
        await self._verify("nbbridge-relay.service", user=False)

    async def test_agent(self) -> None:
        await self._verify("nbbridge-agent.service", user=False)

    async def test_client_user_unit(self) -> None:
        await self._verify("nbbridge-client.service", user=True)

    async def test_verify_notices_a_bad_directive(self) -> None:
        # The check above is only worth something if verify reports what it ignores.
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        copy = os.path.join(directory, "bad.service")
        with open(copy, "w") as f:
            f.write(f"[Service]\nExecStart={LOCAL_TWISTD} --help\nProtectSytem=strict\n")
        out, err, _code = await getProcessOutputAndValue(self.analyze, ["verify", copy])
        self.assertIn("Unknown key", (out + err).decode())


class DirectiveTests(SynchronousTestCase):
    """What the units must say, checked on the shipped text."""

    def test_system_units_are_sandboxed(self) -> None:
        for name in SYSTEM_UNITS:
            service = read_unit(SYSTEMD / name)["Service"]
            for key, value in {
                "Type": "simple",
                "Restart": "always",
                "DynamicUser": "yes",
                "User": "nbbridge",
                "NoNewPrivileges": "yes",
                "ProtectSystem": "strict",
                "ProtectHome": "yes",
                "PrivateTmp": "yes",
                "StateDirectory": "nbbridge",
                "ConfigurationDirectory": "nbbridge",
            }.items():
                self.assertEqual(service.get(key), [value], f"{name}: {key}")
            self.assertEqual(
                read_unit(SYSTEMD / name)["Install"]["WantedBy"], ["multi-user.target"]
            )

    def test_system_units_raise_the_descriptor_limit(self) -> None:
        """Every connection costs a descriptor: the default soft limit (1024) is a few hundred
        slow clients away from EMFILE, which locks agents out of the relay."""
        for name in SYSTEM_UNITS:
            [limit] = read_unit(SYSTEMD / name)["Service"]["LimitNOFILE"]
            self.assertGreaterEqual(int(limit.split(":")[0]), 65536, name)

    def test_exec_start_is_twistd_in_the_foreground(self) -> None:
        for name, plugin in (
            ("nbbridge-relay.service", "nbbridge-relay"),
            ("nbbridge-agent.service", "nbbridge-agent"),
            ("nbbridge-client.service", "nbbridge-client"),
        ):
            argv = exec_start(read_unit(SYSTEMD / name))
            self.assertEqual(argv[:4], [INSTALLED_TWISTD, "--nodaemon", "--pidfile=", plugin])

    def test_contract_flags(self) -> None:
        expected = {
            "nbbridge-relay.service": {"--listen", "--config", "--admin-token-file"},
            "nbbridge-agent.service": {
                "--relay", "--name", "--token-file", "--key", "--authorized-keys", "--expose",
            },
            "nbbridge-client.service": {
                "--relay", "--agent", "--agent-key", "--token-file", "--key", "--forward",
            },
        }  # fmt: skip
        for name, flags in expected.items():
            args = exec_start(read_unit(SYSTEMD / name))[4:]
            self.assertEqual({a for a in args if a.startswith("--")}, flags, name)

    def test_secrets_come_from_credentials(self) -> None:
        """System units read tokens and keys from $CREDENTIALS_DIRECTORY (%d), loaded from
        /etc/nbbridge by LoadCredential=: nothing secret on the command line, and nothing the
        dynamic user must be able to read in /etc/nbbridge."""
        for name in SYSTEM_UNITS:
            unit = read_unit(SYSTEMD / name)
            args = exec_start(unit)
            loaded = {
                spec.split(":", 1)[0]: spec.split(":", 1)[1]
                for spec in unit["Service"].get("LoadCredential", [])
            }
            secret_flags = {"--token-file", "--admin-token-file", "--key"}
            for flag, value in itertools.pairwise(args):
                if flag in secret_flags:
                    self.assertTrue(value.startswith("%d/"), f"{name}: {flag} {value}")
                    credential = value[len("%d/") :]
                    self.assertIn(credential, loaded, f"{name}: no LoadCredential={credential}")
                    self.assertTrue(loaded[credential].startswith("/etc/nbbridge/"))
            self.assertFalse({"--token", "--admin-token"} & set(args), name)

    def test_client_is_a_user_unit(self) -> None:
        unit = read_unit(SYSTEMD / "nbbridge-client.service")
        self.assertEqual(unit["Install"]["WantedBy"], ["default.target"])
        self.assertEqual(unit["Service"]["Restart"], ["always"])
        self.assertNotIn("User", unit["Service"])
        args = exec_start(unit)
        for flag in ("--token-file", "--key"):
            self.assertTrue(args[args.index(flag) + 1].startswith("%h/"), flag)


class CommandLineTests(SynchronousTestCase):
    """Each unit's command line, with real files in place of the placeholders, is accepted
    by twistd and by the daemon's own Options."""

    def _args(self, name: str) -> list[str]:
        root = os.path.abspath(self.mktemp())
        specifiers = {"%d": f"{root}/run/credentials", "%h": f"{root}/home/user"}
        argv = exec_start(read_unit(SYSTEMD / name))
        return [argv[0], *materialize(argv[1:], root, specifiers)]

    def _parse(self, name: str, plugin: str, options: type[usage.Options]) -> usage.Options:
        argv = self._args(name)
        parsed = options()
        parsed.parseOptions(plugin_args(argv, plugin))
        # twistd itself: its own flags, then the plugin (found through the drop-in).
        server = ServerOptions()
        server.parseOptions(argv[1:])
        self.assertEqual(server.subCommand, plugin)
        self.assertTrue(server["nodaemon"])
        return parsed

    def test_relay(self) -> None:
        from nbbridge.relay.tap import Options

        options = self._parse("nbbridge-relay.service", "nbbridge-relay", Options)
        self.assertEqual(options["listen"], "tcp:8765:interface=127.0.0.1")

    def test_agent(self) -> None:
        from nbbridge.agent.tap import Options

        options = self._parse("nbbridge-agent.service", "nbbridge-agent", Options)
        self.assertEqual(options["relay"], "wss://relay.example.com")
        self.assertEqual(options["name"], "gpu")

    def test_client(self) -> None:
        from nbbridge.client.tap import Options

        options = self._parse("nbbridge-client.service", "nbbridge-client", Options)
        self.assertEqual(options["agent"], "gpu")
