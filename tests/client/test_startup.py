"""nbbridge-client and -agent refuse to start, in one line, when they could not do their job.

Units, with a real taken port on 127.0.0.1, and the real `twistd` once per case: what a
service manager's log shows and the exit status it acts on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ProcessTerminated
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from nbbridge.client._forward import ForwardService
from nbbridge.crypto import PrivateKey, write_private_key
from nbbridge.demo import write_secret
from nbbridge.transport import parse_relay_url
from nbbridge.tunnel import AgentLink
from tests._loopback import listen
from tests.tunnel._process import child_env, spawn, twistd_command


def _link() -> AgentLink:
    key = PrivateKey.generate()
    relay = parse_relay_url("ws://127.0.0.1:9")
    return AgentLink(MemoryReactorClock(), relay, "gpu", key.public_key, key, "t")


class TakenPortTests(TestCase):
    async def test_taken_port_at_start_up_ends_twistd_in_one_line(self) -> None:
        """Before the reactor runs (twistd's start-up), a taken port is a one-line exit."""
        taken = await listen(self, Factory())
        not_running = MemoryReactorClock()  # only asked whether it runs, and to stop
        forward = ForwardService(
            TCP4ServerEndpoint(reactor, taken, interface="127.0.0.1"),
            "jupyter",
            _link(),
            not_running,
        )
        with self.assertRaises(SystemExit) as caught:
            forward.startService()
        self.assertEqual(
            caught.exception.code,
            f"nbbridge-client: cannot listen on 127.0.0.1:{taken} for the jupyter forward: "
            "another program uses that port (a Jupyter of this machine?); pick another port "
            "(--forward jupyter=PORT) or stop it",
        )
        self.assertIsNone(forward.port)
        listening = forward.listening
        not_running.advance(0)  # waiters hear on a later turn
        self.failureResultOf(listening)

    async def test_failure_once_running_is_logged_and_stops_the_reactor(self) -> None:
        taken = await listen(self, Factory())
        running = MemoryReactorClock()
        running.running = True
        stopped: list[bool] = []
        running.stop = lambda: stopped.append(True)  # type: ignore[method-assign]
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        forward = ForwardService(
            TCP4ServerEndpoint(reactor, taken, interface="127.0.0.1"), "ssh", _link(), running
        )
        forward.startService()
        listening = forward.listening
        running.advance(0)  # waiters hear on a later turn
        self.failureResultOf(listening)
        self.assertEqual(stopped, [True])
        lines = [formatEvent(e) for e in events if e.get("log_namespace", "").endswith("Service")]
        self.assertIn(
            f"cannot listen on 127.0.0.1:{taken} for the ssh forward: another program uses "
            "that port; pick another port (--forward ssh=PORT) or stop it",
            lines,
        )
        self.assertFalse(any(e.get("log_failure") for e in events), "no traceback")


class TwistdStartupTests(TestCase):
    """The real `twistd`: exit status 1 and one line, or no flags needed with a config."""

    timeout = 120

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.key = os.path.join(self.dir, "client.key")
        write_private_key(self.key, PrivateKey.generate())
        self.token = str(write_secret(Path(self.dir, "client.token"), "s3cret"))
        self.agent_key = PrivateKey.generate().public_key.to_text()

    def client_args(self, *extra: str) -> list[str]:
        return [
            "--relay",
            "ws://127.0.0.1:9",
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

    async def run_to_exit(self, plugin: str, args: list[str], env: dict[str, str]) -> Any:
        child = spawn(self, plugin, twistd_command(plugin, args), child_env(env), cwd=self.dir)
        await child.ended
        return child

    def assertRefusedWith(self, child: Any, line: str) -> None:
        self.assertIsNotNone(child.exit.check(ProcessTerminated), child.tail())
        self.assertEqual(child.exit.value.exitCode, 1, child.tail())
        output = "\n".join(child.lines)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("Usage:", output)
        self.assertTrue(any(x.endswith(line) for x in child.lines), output)

    async def test_client_with_unreadable_ca(self) -> None:
        missing = os.path.join(self.dir, "relay-ca.pem")
        child = await self.run_to_exit(
            "nbbridge-client",
            self.client_args("--forward", "j=0", "--ca", missing),
            {"HOME": self.dir},
        )
        self.assertRefusedWith(
            child, f"nbbridge-client: --ca {missing}: cannot read it: No such file or directory"
        )
        self.assertEqual(len(child.lines), 1, child.lines)

    async def test_agent_with_unreadable_ca(self) -> None:
        missing = os.path.join(self.dir, "relay-ca.pem")
        authorized = os.path.join(self.dir, "authorized_keys")
        Path(authorized).write_text(f"{self.agent_key} laptop\n")
        args = ["--relay", "wss://relay.example.com", "--name", "gpu", "--key", self.key]
        args += ["--token-file", self.token, "--authorized-keys", authorized]
        args += ["--expose", "ssh=22", "--ca", missing]
        child = await self.run_to_exit("nbbridge-agent", args, {})
        self.assertRefusedWith(
            child, f"nbbridge-agent: --ca {missing}: cannot read it: No such file or directory"
        )
        self.assertEqual(len(child.lines), 1, child.lines)

    async def test_client_with_a_taken_forward_port(self) -> None:
        taken = await listen(self, Factory())
        child = await self.run_to_exit(
            "nbbridge-client", self.client_args("--forward", f"jupyter={taken}"), {}
        )
        self.assertRefusedWith(
            child,
            f"nbbridge-client: cannot listen on 127.0.0.1:{taken} for the jupyter forward: "
            "another program uses that port (a Jupyter of this machine?); pick another port "
            "(--forward jupyter=PORT) or stop it",
        )

    async def test_client_needs_no_flags_with_its_config_file(self) -> None:
        """~/.config/nbbridge/client.toml (as pairing writes it): `twistd -n nbbridge-client`."""
        config = Path(self.dir, ".config", "nbbridge")
        config.mkdir(parents=True)
        os.rename(self.key, config / "client.key")
        os.rename(self.token, config / "client.token")
        (config / "client.toml").write_text(
            'relay = "ws://127.0.0.1:9"\nagent = "gpu"\n'
            f'agent_key = "{self.agent_key}"\nkey = "client.key"\n'
            'token_file = "client.token"\nforward = ["jupyter=tcp:0:interface=127.0.0.1"]\n'
        )
        child = spawn(
            self,
            "client",
            twistd_command("nbbridge-client", []),
            child_env({"HOME": self.dir}),
            cwd="/",
        )
        await child.wait_for(r"jupyter → http://127\.0\.0\.1:\d+/")
        await child.stop()
