"""`nbbridge pair` end to end through a real relay on 127.0.0.1.

Both sides run in-process as the command runs them (`pair(reactor, args, out, err)`, with
args parsed by the real `nbbridge` parser), over real sockets to an in-process relay built by
its tap. After pairing, an agent and a client are started from what was written (the client
from client.toml's values) and a connection goes through the link.
"""

from __future__ import annotations

import io
import os
import re
import stat
import sys
import tomllib
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from nbbridge.agent import tap as agent_tap
from nbbridge.cli._main import _parser
from nbbridge.cli._pair import pair
from nbbridge.client import tap as client_tap
from nbbridge.client._forward import ForwardService
from nbbridge.crypto import load_authorized_keys, load_private_key, parse_public_key
from nbbridge.pairing import WORDS, PairingFailed, parse_code
from nbbridge.tunnel import AgentLink
from tests._ports import is_free
from tests.tunnel import _tcp
from tests.tunnel._harness import Client, TunnelTestCase
from tests.tunnel._process import child_env, spawn, twistd_command

_CODE_LINE = re.compile(r"nbbridge pair (\S+) --relay (\S+)")


class _Output(io.StringIO):
    """Collects what the command prints; `code` fires with the code once it is printed."""

    def __init__(self) -> None:
        super().__init__()
        self.code: Deferred[str] = Deferred()

    def write(self, text: str) -> int:
        written = super().write(text)
        match = _CODE_LINE.search(self.getvalue())
        if match is not None and not self.code.called:
            self.code.callback(match.group(1))
        return written


class _PairCase(TunnelTestCase):
    """A relay on loopback, recording what its rendezvous carries; both sides' arguments."""

    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        root = Path(self.files.root.path)
        self.authorized = root / "gpu_authorized_keys"
        self.laptop_dir = root / "laptop"
        self.agent_out = _Output()
        self.carried: list[bytes] = []

    async def start(self, limits: str = "") -> None:
        if limits:
            with open(self.files.relay_toml, "a") as f:
                f.write(f"[limits]\n{limits}\n")
        relay = await self.start_relay()
        rendezvous = relay.relay.pairing
        carry = rendezvous.carry

        def recording(peer: Any, data: bytes) -> None:
            self.carried.append(data)
            carry(peer, data)

        self.patch(rendezvous, "carry", recording)

    def agent_side(self, *extra: str) -> Deferred[None]:
        args = _parser().parse_args(
            [
                "pair",
                "--relay",
                self.relay_url,
                "--name",
                "gpu",
                "--token-file",
                self.files.token_files["gpu"],
                "--key",
                self.files.key_files["agent"],
                "--authorized-keys",
                str(self.authorized),
                "--expose",
                "echo=tcp:127.0.0.1:1",
                *extra,
            ]
        )
        return Deferred.fromCoroutine(pair(reactor, args, self.agent_out, io.StringIO()))

    def client_side(self, code: str, *extra: str) -> Deferred[None]:
        args = _parser().parse_args(
            ["pair", code, "--relay", self.relay_url, "--dir", str(self.laptop_dir), *extra]
        )
        return Deferred.fromCoroutine(pair(reactor, args, io.StringIO(), io.StringIO()))

    async def failure_of(self, d: Deferred[None]) -> str:
        try:
            await d
        except PairingFailed as e:
            return str(e)
        self.fail("pairing succeeded")

    async def start_client_from(self, config: dict[str, Any]) -> Any:
        """nbbridge-client from the written client.toml; only its forward ports become 0."""
        forwards = [f"{f.partition('=')[0]}=0" for f in config["forward"]]
        options = client_tap.Options()
        options.parseOptions(
            ["--config", str(self.laptop_dir / "client.toml")]
            + [arg for f in forwards for arg in ("--forward", f)]
        )
        service = client_tap.makeService(options, reactor)
        service.startService()
        ports = {}
        for child in service:  # type: ignore[attr-defined]
            if isinstance(child, ForwardService):
                ports[child.service_name] = (await child.listening).getHost().port
        link = next(s for s in service if isinstance(s, AgentLink))  # type: ignore[attr-defined]
        client = Client(service, link, ports)
        self.clients.append(client)
        return client


class PairTests(_PairCase):
    async def test_right_code_writes_both_sides_and_the_link_works(self) -> None:
        """Right code: both sides' files written; agent and client started from them connect."""
        await self.start()
        agent_done = self.agent_side("--client-token-file", self.files.token_files["laptop"])
        code = await self.agent_out.code
        self.assertTrue(re.fullmatch(r"[1-9][0-9]*-[a-z]+-[a-z]+", code), code)
        await self.client_side(code, "--label", "my laptop")
        await agent_done

        # GPU host: one labelled line for the laptop's key.
        client_key = load_private_key(self.laptop_dir / "client.key")
        lines = self.authorized.read_text().splitlines()
        self.assertEqual(len(lines), 1)
        self.assertRegex(
            lines[0],
            rf"^{client_key.public_key.to_text()} my-laptop paired \d{{4}}-\d\d-\d\d$",
        )
        self.assertIn(client_key.public_key, load_authorized_keys(str(self.authorized)))
        # Laptop: config, key and token, secrets private.
        config = tomllib.loads((self.laptop_dir / "client.toml").read_text())
        self.assertEqual(
            config,
            {
                "relay": self.relay_url,
                "agent": "gpu",
                "agent_key": self.files.public("agent"),
                "key": "client.key",
                "token_file": "client.token",
                "forward": ["echo=8081"],
            },
        )
        for name in ("client.key", "client.token"):
            mode = stat.S_IMODE(os.stat(self.laptop_dir / name).st_mode)
            self.assertEqual(mode, 0o600, name)
        self.assertEqual(
            (self.laptop_dir / "client.token").read_text().strip(), self.files.tokens["laptop"]
        )

        # A link works with what was written: the agent with its own files and the new
        # authorized_keys, the client from client.toml (its forward's port replaced by 0 with
        # a flag, so this test takes no fixed port; PairCommandTests runs it with no flags).
        port, _ = await self.serve(_tcp.Echo)
        agent_options = self.agent_args({"echo": f"tcp:127.0.0.1:{port}"})
        agent_options[agent_options.index("--authorized-keys") + 1] = str(self.authorized)
        mark = self.relay_mark()
        options = agent_tap.Options()
        options.parseOptions(agent_options)
        agent = agent_tap.makeService(options, reactor)
        agent.startService()
        self.agents.append(agent)  # type: ignore[arg-type]
        await self.wait_agent_online(mark)
        client = await self.start_client_from(config)
        await self.echo_once(client.port("echo"))

    async def test_wrong_code_fails_both_and_burns_the_code(self) -> None:
        """A wrong code: both sides fail after one try, write nothing; the code is used up."""
        await self.start()
        agent_done = self.agent_side()
        code = parse_code(await self.agent_out.code)
        other = next(w for w in WORDS if w != code.words[1])
        wrong = f"{code.nameplate}-{code.words[0]}-{other}"
        client_error = await self.failure_of(self.client_side(wrong))
        agent_error = await self.failure_of(agent_done)
        self.assertIn("wrong code", client_error)
        self.assertIn("wrong code", agent_error)
        self.assertFalse(self.authorized.exists())
        self.assertFalse((self.laptop_dir / "client.toml").exists())
        # The right code now finds nothing: one attempt per code.
        again = await self.failure_of(self.client_side(str(code)))
        self.assertIn("no such pairing code", again)

    async def test_expired_code(self) -> None:
        """A code not used within pairing_code_ttl: the agent side ends, the laptop is refused."""
        await self.start("pairing_code_ttl = 0.5")
        agent_done = self.agent_side()
        code = await self.agent_out.code
        self.assertIn("expired", await self.failure_of(agent_done))
        self.assertIn("no such pairing code", await self.failure_of(self.client_side(code)))
        self.assertFalse((self.laptop_dir / "client.toml").exists())

    async def test_relay_sees_no_key_nor_token_nor_code(self) -> None:
        """Everything the relay carries is SPAKE2 messages and ciphertext."""
        await self.start()
        agent_done = self.agent_side("--client-token-file", self.files.token_files["laptop"])
        code = await self.agent_out.code
        await self.client_side(code)
        await agent_done
        self.assertGreaterEqual(len(self.carried), 8)  # pake, confirm, offer, done each way
        client_key = load_private_key(self.laptop_dir / "client.key").public_key
        agent_key = parse_public_key(self.files.public("agent"))
        secrets = [
            client_key.raw,
            client_key.to_text().encode(),
            agent_key.raw,
            agent_key.to_text().encode(),
            self.files.tokens["laptop"].encode(),
            code.encode(),
            b"gpu",
        ]
        for word in parse_code(code).words:
            secrets.append(word.encode())
        for message in self.carried:
            for secret in secrets:
                self.assertNotIn(secret, message)

    async def test_attempts_are_rate_limited(self) -> None:
        """Past pairings_per_minute, joins are refused with the limit named."""
        await self.start("pairings_per_minute = 2")
        first = await self.failure_of(self.client_side("11-acorn-zebra"))
        self.assertIn("no such pairing code", first)
        await self.failure_of(self.client_side("12-acorn-zebra"))
        third = await self.failure_of(self.client_side("13-acorn-zebra"))
        self.assertIn("too many pairing attempts (pairings_per_minute = 2)", third)


class PairCommandTests(_PairCase):
    """The real `nbbridge pair` on both sides and real twistd daemons, each a child process.

    As a user runs them: the GPU host's pairing and agent read agent.toml; the laptop pairs
    with no --dir (HOME is a fresh directory) and its client starts with no flags at all,
    from ~/.config/nbbridge/client.toml.
    """

    async def test_commands_pair_and_daemons_link(self) -> None:
        await self.start()
        root = Path(self.files.root.path)
        echo_port, _ = await self.serve(_tcp.Echo)
        agent_toml = root / "agent.toml"
        agent_toml.write_text(
            f'relay = "{self.relay_url}"\nname = "gpu"\ntoken_file = "gpu.token"\n'
            'key = "agent.key"\nauthorized_keys = "gpu_authorized_keys"\n'
            f'expose = ["echo=tcp:127.0.0.1:{echo_port}"]\n'
        )
        home = root / "home"
        home.mkdir()
        laptop_env = child_env({"HOME": str(home)})
        nbbridge = [sys.executable, "-m", "nbbridge.cli"]
        agent = spawn(
            self,
            "nbbridge pair (GPU host)",
            [*nbbridge, "pair", "--config", str(agent_toml), "--client-token-file", "laptop.token"],
            child_env(),
            cwd=str(root),
        )
        found = await agent.wait_for(r"^nbbridge pair (\S+) --relay (\S+)$")
        self.assertEqual(found.group(2), f"{self.relay_url}/")
        laptop = spawn(
            self,
            "nbbridge pair (laptop)",
            [*nbbridge, "pair", found.group(1), "--relay", found.group(2)],
            laptop_env,
        )
        await laptop.wait_for("paired with agent gpu")
        await agent.wait_for("Restart the agent")
        await laptop.ended
        await agent.ended
        self.assertTrue(laptop.exited_cleanly(), laptop.tail())
        self.assertTrue(agent.exited_cleanly(), agent.tail())
        config_dir = home / ".config" / "nbbridge"
        self.assertEqual(
            sorted(p.name for p in config_dir.iterdir()),
            ["client.key", "client.token", "client.toml"],
        )

        mark = self.relay_mark()
        spawn(
            self,
            "nbbridge-agent",
            twistd_command("nbbridge-agent", ["--config", str(agent_toml)]),
            child_env(),
        )
        await self.relay_says("agent gpu online", since=mark)
        # No flags: everything comes from the written client.toml. Its forward is echo=8081
        # (the first port for a service with no well-known one); only if another program
        # holds 8081 on this machine is it replaced by a free port, as a flag would.
        flags = [] if is_free(8081) else ["--forward", "echo=0"]
        client = spawn(
            self, "nbbridge-client", twistd_command("nbbridge-client", flags), laptop_env
        )
        listening = await client.wait_for(r"echo → 127\.0\.0\.1:(\d+)")
        if not flags:
            self.assertEqual(listening.group(1), "8081")
        await self.echo_once(int(listening.group(1)))
