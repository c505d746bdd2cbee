"""docs/deploy.md's relay drop-in for several relays is a command line the relay accepts.

The block's ``ExecStart=`` is taken from the guide as a user would paste it, with what a
test must change: ``%d`` (systemd's credentials directory) and /etc/nbbridge become files
of this test, and the Redis address becomes a closed loopback port (nothing here may talk
beyond loopback). Then the real `Options` and `makeService` assemble a relay from it: it
names itself by its advertise URL and has a cluster; its store is closed again at once.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from nbbridge.demo import write_secret
from nbbridge.relay import tap
from nbbridge.relay.tap import Options, makeService

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


def drop_in_command() -> list[str]:
    """The relay's arguments in the guide's cluster drop-in (after ``nbbridge-relay``)."""
    blocks = re.findall(r"```sh\n(.*?)```", GUIDE.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "nbbridge-relay.service.d/cluster.conf" in b]
    (exec_start,) = re.findall(r"^ExecStart=(\S.*?[^\\])$", block, flags=re.S | re.M)
    argv = shlex.split(exec_start.replace("\\\n", " "))
    return argv[argv.index("nbbridge-relay") + 1 :]


class DropInTests(TestCase):
    async def test_drop_in_command_makes_a_cluster_relay(self) -> None:
        root = Path(self.mktemp()).absolute()
        root.mkdir()
        write_secret(root / "admin-token", "admin")
        write_secret(root / "redis-password", "sesame")
        (root / "relay.toml").write_text("")
        args = [
            a.replace("%d/", f"{root}/")
            .replace("/etc/nbbridge/relay.toml", str(root / "relay.toml"))
            .replace("redis://10.0.0.9:6379/0", "redis://127.0.0.1:1/0")
            for a in drop_in_command()
        ]
        self.assertIn("--store-password-file", args)
        options = Options()
        options.parseOptions(args)
        service = makeService(options, reactor=reactor)
        self.assertEqual(service.relay.where, "wss://relay.example.com/r1")
        self.assertIsNotNone(service.relay.cluster)
        [backend] = [s for s in service if isinstance(s, tap.BackendService)]
        await backend.backend.close()
