"""`nbbridge pair` behind the load balancer: three relays on a real Redis, a real HAProxy.

The GPU host opens its code through HAProxy's origin (any relay may take it); the relay that
holds the rendezvous names itself (its advertise URL) in the nameplate message, so the
printed command sends the laptop to that relay through HAProxy (`/rN`). The laptop's
client.toml keeps the front's URL, not the one relay's. A laptop that joins at another relay
(what an agent side from before this printed: the URL it was given) is refused clearly.
"""

from __future__ import annotations

import io
import re
import tomllib
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from nbbridge.cli._main import _parser
from nbbridge.cli._pair import pair
from nbbridge.crypto import load_authorized_keys
from nbbridge.pairing import PairingFailed

from ._cluster import ClusterTestCase

_CODE_LINE = re.compile(r"nbbridge pair (\S+) --relay (\S+)")


class _Output(io.StringIO):
    """What the GPU host's side prints; `line` fires with (code, relay URL) once printed."""

    def __init__(self) -> None:
        super().__init__()
        self.line: Deferred[tuple[str, str]] = Deferred()

    def write(self, text: str) -> int:
        written = super().write(text)
        match = _CODE_LINE.search(self.getvalue())
        if match is not None and not self.line.called:
            self.line.callback((match.group(1), match.group(2)))
        return written


class ClusterPairingTests(ClusterTestCase):
    def agent_side(self, out: _Output) -> Deferred[None]:
        root = Path(self.files.root.path)
        args = _parser().parse_args(
            [
                "pair",
                "--relay",
                self.lb_url,
                "--name",
                "gpu",
                "--token-file",
                self.files.token_files["gpu"],
                "--key",
                self.files.key_files["agent"],
                "--authorized-keys",
                str(root / "gpu_authorized_keys"),
                "--expose",
                "echo=tcp:127.0.0.1:1",
            ]
        )
        return Deferred.fromCoroutine(pair(reactor, args, out, io.StringIO()))

    def client_side(self, code: str, relay: str) -> Deferred[None]:
        laptop = Path(self.files.root.path) / "laptop"
        args = _parser().parse_args(["pair", code, "--relay", relay, "--dir", str(laptop)])
        return Deferred.fromCoroutine(pair(reactor, args, io.StringIO(), io.StringIO()))

    async def open_code(self) -> tuple[str, str, int, Deferred[None]]:
        """The GPU host's side through the front: (code, printed URL, holding relay, its run)."""
        since = self.marks()
        out = _Output()
        agent = self.agent_side(out)
        code, relay = await self.within(60, "the code to be printed", out.line)
        holder = await self.relay_logs(r"pairing: agent gpu opened code", since)
        return code, relay, holder, agent

    async def test_pairing_through_the_load_balancer(self) -> None:
        await self.start_cluster()
        code, printed, holder, agent = await self.open_code()
        # The command names the relay that holds the rendezvous, through HAProxy.
        self.assertEqual(printed, self.relay_url_of(holder))
        since = self.marks()
        await self.within(60, "the laptop's side", self.client_side(code, printed))
        await self.within(60, "the GPU host's side", agent)
        await self.relay_logs(r"pairing: a client joined agent gpu's code", since, among={holder})
        root = Path(self.files.root.path)
        self.assertEqual(len(load_authorized_keys(str(root / "gpu_authorized_keys"))), 1)
        with open(root / "laptop" / "client.toml", "rb") as f:
            config = tomllib.load(f)
        # Kept: the front's URL (any relay), not the one relay the rendezvous used.
        self.assertEqual(config["relay"], self.lb_url)
        self.assertEqual(config["agent"], "gpu")

    async def test_join_at_another_relay_is_refused_clearly(self) -> None:
        """A laptop that reaches another relay (an old agent side's URL) is told why."""
        with open(self.files.relay_toml, "a") as f:
            # The GPU host's side ends when its burned code expires: soon, here.
            f.write("[limits]\npairing_code_ttl = 10\n")
        await self.start_cluster()
        code, _printed, holder, agent = await self.open_code()
        other = self.other_than(holder)
        try:
            await self.within(60, "the refusal", self.client_side(code, self.relay_url_of(other)))
        except PairingFailed as e:
            self.assertIn("opened at another relay", str(e))
        else:
            self.fail("the join at another relay succeeded")
        # The code is burned (one try); the GPU host's side learns it when the code expires.
        try:
            await self.within(60, "the GPU host's side to end", agent)
        except PairingFailed as e:
            self.assertIn("expired", str(e))
        else:
            self.fail("the GPU host's side succeeded")
