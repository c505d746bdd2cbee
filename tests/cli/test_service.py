"""`nbbridge install-service` / `uninstall-service` on a throw-away root: what it writes
(checked by `systemd-analyze verify` and by the daemons' option parsers), and the commands it
would run (through a recording runner: the real systemctl is never called)."""

from __future__ import annotations

import io
import os
import plistlib
import shutil
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from nbbridge.cli import _service, main
from nbbridge.cli._errors import UserError
from nbbridge.cli._service import Target, execute, plan_install, plan_uninstall
from nbbridge.crypto import PrivateKey, write_private_key
from tests._tools import skip_unavailable
from tests.deploy._units import exec_start, materialize, plugin_args, read_unit

_COMPLAINTS = ("unknown", "ignoring", "invalid", "failed", "not executable", "bad ", "error")


class Recorder:
    """A runner that records each command and answers with a fixed status."""

    def __init__(self, status: int = 0) -> None:
        self.commands: list[tuple[str, ...]] = []
        self.status = status

    def __call__(self, argv: Sequence[str]) -> int:
        self.commands.append(tuple(argv))
        return self.status


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


class _Root:
    """A throw-away root with an agent's, a client's and a relay's files in place."""

    def __init__(self, base: str) -> None:
        self.root = Path(os.path.abspath(base))
        self.home = Path("/home/ada")
        etc = self.root / "etc/nbbridge"
        _write(etc / "agent.toml", 'relay = "wss://r.example"\ntoken_file = "agent.token"\n'
               'key = "/etc/nbbridge/agent.key"\nexpose = ["jupyter=8888"]\n', 0o644)  # fmt: skip
        _write(etc / "relay.toml", '[agents.gpu]\ntoken_sha256 = "00"\n', 0o644)
        _write(etc / "admin-token", "secret\n")
        client = self.root / "home/ada/.config/nbbridge"
        _write(client / "client.toml", 'relay = "wss://r.example"\nagent = "gpu"\n'
               'token_file = "client.token"\nkey = "client.key"\n')  # fmt: skip

    def target(self, init: str = "systemd") -> Target:
        return Target(root=self.root, home=self.home, init=init, uid=1000)


class PlanTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.fs = _Root(self.mktemp())

    def _install(self, role: str, init: str = "systemd") -> tuple[Path, str]:
        plan = plan_install(role, self.fs.target(init))
        [(path, text)] = plan.write
        return path, text

    def test_agent_unit_is_the_shipped_one_with_config_and_credentials(self) -> None:
        path, text = self._install("agent")
        self.assertEqual(path, self.fs.root / "etc/systemd/system/nbbridge-agent.service")
        unit = path.parent / "check.service"
        unit.parent.mkdir(parents=True)
        unit.write_text(text)
        service = read_unit(unit)["Service"]
        argv = exec_start(read_unit(unit))
        self.assertEqual(argv[0], self.fs.target().twistd)
        self.assertEqual(
            argv[1:],
            ["--nodaemon", "--pidfile=", "nbbridge-agent", "--config", "/etc/nbbridge/agent.toml",
             "--token-file", "%d/agent-token", "--key", "%d/agent.key"],
        )  # fmt: skip
        # Relative to the config's directory, or absolute as written.
        self.assertEqual(
            service["LoadCredential"],
            ["agent-token:/etc/nbbridge/agent.token", "agent.key:/etc/nbbridge/agent.key"],
        )
        # The shipped sandbox, unchanged.
        for key, value in {"ProtectSystem": "strict", "DynamicUser": "yes"}.items():
            self.assertEqual(service[key], [value])
        self.assertEqual(read_unit(unit)["Install"]["WantedBy"], ["multi-user.target"])
        self.assertNotIn("relay.example.com", text)

    def test_relay_keeps_its_listen_and_loads_the_admin_token(self) -> None:
        _path, text = self._install("relay")
        self.assertIn("--listen tcp:8765:interface=127.0.0.1", text)
        self.assertIn("--config /etc/nbbridge/relay.toml", text)
        self.assertIn("--admin-token-file %d/admin-token", text)
        self.assertIn("LoadCredential=admin-token:/etc/nbbridge/admin-token\n", text)

    def test_relay_without_admin_token(self) -> None:
        (self.fs.root / "etc/nbbridge/admin-token").unlink()
        _path, text = self._install("relay")
        self.assertNotIn("admin-token", text)
        self.assertNotIn("LoadCredential", text)

    def test_client_is_a_user_unit(self) -> None:
        path, text = self._install("client")
        self.assertEqual(
            path, self.fs.root / "home/ada/.config/systemd/user/nbbridge-client.service"
        )
        self.assertIn("--config /home/ada/.config/nbbridge/client.toml", text)
        self.assertIn("LoadCredential=client.key:/home/ada/.config/nbbridge/client.key", text)
        self.assertIn("WantedBy=default.target", text)

    def test_commands_on_a_live_system(self) -> None:
        unit = "nbbridge-agent.service"
        plan = plan_install("agent", _live(self.fs))
        self.assertEqual(plan.before, ())
        self.assertEqual(
            [c.argv for c in plan.after],
            [("systemctl", "daemon-reload"), ("systemctl", "enable", unit),
             ("systemctl", "restart", unit)],
        )  # fmt: skip
        plan = plan_uninstall("agent", _live(self.fs))
        self.assertEqual([c.argv for c in plan.before], [("systemctl", "disable", "--now", unit)])
        self.assertEqual([c.argv for c in plan.after], [("systemctl", "daemon-reload")])

    def test_client_commands_are_user_commands(self) -> None:
        plan = plan_install("client", _live(self.fs))
        self.assertEqual(
            [c.argv for c in plan.after],
            [("systemctl", "--user", "daemon-reload"),
             ("systemctl", "--user", "enable", "nbbridge-client.service"),
             ("systemctl", "--user", "restart", "nbbridge-client.service")],
        )  # fmt: skip

    def test_launchd(self) -> None:
        path, text = self._install("client", init="launchd")
        self.assertEqual(
            path, self.fs.root / "home/ada/Library/LaunchAgents/org.nbbridge.client.plist"
        )
        plist = plistlib.loads(text.encode())
        self.assertEqual(plist["Label"], "org.nbbridge.client")
        self.assertEqual(
            plist["ProgramArguments"][1:],
            ["--nodaemon", "--pidfile=", "nbbridge-client",
             "--config", "/home/ada/.config/nbbridge/client.toml"],
        )  # fmt: skip
        self.assertEqual(plist["StandardErrorPath"], "/home/ada/Library/Logs/nbbridge-client.log")
        target = _live(self.fs, init="launchd")
        plan = plan_install("client", target)
        plist_path = str(plan.write[0][0])
        self.assertEqual(
            [c.argv for c in plan.commands],
            [("launchctl", "bootout", "gui/1000", plist_path),
             ("launchctl", "bootstrap", "gui/1000", plist_path)],
        )  # fmt: skip
        self.assertEqual(
            [c.argv for c in plan_uninstall("client", target).commands],
            [("launchctl", "bootout", "gui/1000", plist_path)],
        )

    def test_launchd_is_for_the_client_only(self) -> None:
        error = self.assertRaises(UserError, plan_install, "agent", self.fs.target("launchd"))
        self.assertIn("only the client", str(error))

    def test_missing_config(self) -> None:
        (self.fs.root / "etc/nbbridge/agent.toml").unlink()
        error = self.assertRaises(UserError, plan_install, "agent", self.fs.target())
        self.assertIn(f"no config at {self.fs.root}/etc/nbbridge/agent.toml", str(error))

    def test_bad_config(self) -> None:
        _write(self.fs.root / "etc/nbbridge/agent.toml", "relay = \n")
        error = self.assertRaises(UserError, plan_install, "agent", self.fs.target())
        self.assertIn("not valid TOML", str(error))

    def test_percent_in_a_path_is_escaped(self) -> None:
        _write(self.fs.root / "etc/nbbridge/agent.toml", 'key = "/etc/nbbridge/50%.key"\n')
        _path, text = self._install("agent")
        self.assertIn("LoadCredential=agent.key:/etc/nbbridge/50%%.key", text)


def _live(fs: _Root, init: str = "systemd") -> Target:
    """A target whose files are read from the throw-away root but whose commands are live."""

    class LiveTarget(Target):
        @property
        def offline(self) -> bool:
            return False

    return LiveTarget(root=fs.root, home=fs.home, init=init, uid=1000)


class ExecuteTests(SynchronousTestCase):
    """The command line: files written under --root, commands through the runner."""

    def setUp(self) -> None:
        self.fs = _Root(self.mktemp())
        self.runner = Recorder()
        self.patch(_service, "run_command", self.runner)

    def run_main(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            status = main(list(argv))
        return status, out.getvalue(), err.getvalue()

    def test_install_and_uninstall(self) -> None:
        root = str(self.fs.root)
        unit = self.fs.root / "etc/systemd/system/nbbridge-agent.service"
        status, out, _err = self.run_main("install-service", "agent", "--root", root)
        self.assertEqual(status, 0)
        self.assertTrue(unit.is_file())
        self.assertEqual(unit.stat().st_mode & 0o777, 0o644)
        self.assertIn(f"wrote {unit}", out)
        self.assertEqual(
            self.runner.commands,
            [("systemctl", f"--root={root}", "enable", "nbbridge-agent.service")],
        )
        status, out, _err = self.run_main("uninstall-service", "agent", "--root", root)
        self.assertEqual(status, 0)
        self.assertFalse(unit.exists())
        self.assertEqual(
            self.runner.commands[1:],
            [("systemctl", f"--root={root}", "disable", "nbbridge-agent.service")],
        )

    def test_dry_run_does_nothing(self) -> None:
        status, out, _err = self.run_main(
            "install-service", "relay", "--root", str(self.fs.root), "--dry-run"
        )
        self.assertEqual(status, 0)
        self.assertIn("would write", out)
        self.assertIn("    ProtectSystem=strict", out)
        self.assertIn(f"would run: systemctl --root={self.fs.root} enable", out)
        self.assertEqual(self.runner.commands, [])
        self.assertFalse((self.fs.root / "etc/systemd").exists())

    def test_a_failing_command_is_one_line(self) -> None:
        self.runner.status = 1
        status, _out, err = self.run_main("install-service", "agent", "--root", str(self.fs.root))
        self.assertEqual(status, 2)
        self.assertEqual(
            err,
            f"nbbridge: `systemctl --root={self.fs.root} enable nbbridge-agent.service` failed "
            "(exit status 1)\n",
        )

    def test_missing_config_is_one_line(self) -> None:
        status, _out, err = self.run_main("install-service", "agent", "--root", "/nonexistent")
        self.assertEqual(status, 2)
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn("no config at /nonexistent/etc/nbbridge/agent.toml", err)

    def test_unchecked_failure_goes_on(self) -> None:
        self.runner.status = 5
        plan = plan_uninstall("agent", _live(self.fs))
        with self.assertRaises(UserError):  # daemon-reload is checked
            execute(plan, self.runner, lambda line: None)
        self.assertEqual(len(self.runner.commands), 2)  # disable --now failed, went on


class VerifyTests(TestCase):
    """`systemd-analyze verify` accepts every unit install-service writes."""

    def setUp(self) -> None:
        self.analyze = shutil.which("systemd-analyze")
        if self.analyze is None:
            skip_unavailable("systemd-analyze not found: apt-get install systemd (.ci/run does)")
        self.fs = _Root(self.mktemp())

    async def _verify(self, role: str, user: bool) -> None:
        target = self.fs.target()
        if not os.access(target.twistd, os.X_OK):
            skip_unavailable(f"no twistd at {target.twistd}")
        plan = plan_install(role, target)
        execute(plan, Recorder(), lambda line: None)
        [(path, _text)] = plan.write
        env = dict(os.environ)
        args = ["verify", str(path)]
        if user:
            runtime = self.fs.root / "run/user/1000"
            runtime.mkdir(parents=True, mode=0o700)
            env["XDG_RUNTIME_DIR"] = str(runtime)
            args.insert(0, "--user")
        out, err, code = await getProcessOutputAndValue(self.analyze, args, env=env)
        output = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, f"systemd-analyze {' '.join(args)}:\n{output}")
        complaints = [
            line
            for line in output.splitlines()
            if path.name in line and any(word in line.lower() for word in _COMPLAINTS)
        ]
        self.assertEqual(complaints, [], output)

    async def test_agent(self) -> None:
        await self._verify("agent", user=False)

    async def test_relay(self) -> None:
        await self._verify("relay", user=False)

    async def test_client(self) -> None:
        await self._verify("client", user=True)


class CommandLineTests(SynchronousTestCase):
    """The written ExecStart, with real files in place, parses with the daemon's own Options."""

    def _args(self, role: str, plugin: str) -> list[str]:
        fs = _Root(self.mktemp())
        [(path, _text)] = plan_install(role, fs.target()).write
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_text)
        argv = exec_start(read_unit(path))
        files = os.path.abspath(self.mktemp())
        specifiers = {"%d": f"{files}/run/credentials"}
        return materialize(plugin_args(argv, plugin), files, specifiers)

    def test_relay(self) -> None:
        from nbbridge.relay.tap import Options

        options = Options()
        options.parseOptions(self._args("relay", "nbbridge-relay"))
        self.assertEqual(options["listen"], "tcp:8765:interface=127.0.0.1")

    def test_agent_and_client(self) -> None:
        """Once the daemons read config files (issue 15, Deliver 2), a complete config and
        the credentials are all the written command line needs."""
        from nbbridge.agent import tap as agent_tap
        from nbbridge.client import tap as client_tap

        agent_key = PrivateKey.generate()
        configs = {
            "agent": 'relay = "ws://127.0.0.1:8765"\nname = "gpu"\nexpose = ["jupyter=8888"]\n'
            'authorized_keys = "authorized_keys"\n',
            "client": 'relay = "ws://127.0.0.1:8765"\nagent = "gpu"\nforward = ["jupyter=8080"]\n'
            f'agent_key = "{agent_key.public_key.to_text()}"\n',
        }
        for role, tap in (("agent", agent_tap), ("client", client_tap)):
            options = tap.Options()
            if "config" not in {p[0] for p in options.optParameters}:
                raise SkipTest(f"the {role} reads no --config yet (issue 15, Deliver 2)")
            fs = _Root(self.mktemp())
            target = fs.target()
            [(path, text)] = plan_install(role, target).write
            config = fs.root / "config" / f"{role}.toml"
            _write(config, configs[role], 0o644)
            _write(config.parent / "authorized_keys", agent_key.public_key.to_text() + "\n", 0o644)
            credentials = fs.root / "credentials"
            _write(credentials / f"{role}-token", "token\n")
            write_private_key(str(credentials / f"{role}.key"), PrivateKey.generate())
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            args = plugin_args(exec_start(read_unit(path)), f"nbbridge-{role}")
            args[args.index("--config") + 1] = str(config)
            args = [a.replace("%d", str(credentials)) for a in args]
            options.parseOptions(args)
            self.assertEqual(options["relay"], "ws://127.0.0.1:8765")
