"""What `nbbridge pair` reads and writes, without a relay."""

from __future__ import annotations

import datetime
import io
import os
import stat
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from nbbridge.cli import main
from nbbridge.cli._main import _parser
from nbbridge.cli._pair import pair
from nbbridge.cli._pair_files import (
    PairSetupError,
    agent_setup,
    authorize,
    forwards,
    read_agent_config,
)
from nbbridge.crypto import PrivateKey, load_authorized_keys

DAY = datetime.date(2026, 12, 2)


class FilesTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def test_authorize_appends_a_labelled_line_once(self) -> None:
        path = str(self.dir / "authorized_keys")
        Path(path).write_text("# mine\nnbb1-not-checked-here old")  # no final newline
        key = PrivateKey.generate().public_key
        line = authorize(path, key, "laptop", DAY)
        self.assertEqual(line, f"{key.to_text()} laptop paired 2026-12-02")
        self.assertIsNone(authorize(path, key, "laptop", DAY))
        self.assertEqual(Path(path).read_text().splitlines()[-1], line)
        self.assertEqual(len(Path(path).read_text().splitlines()), 3)

    def test_new_authorized_keys_is_private_and_loads(self) -> None:
        path = str(self.dir / "authorized_keys")
        key = PrivateKey.generate().public_key
        authorize(path, key, "laptop", DAY)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(load_authorized_keys(path).label_for(key), "laptop paired 2026-12-02")

    def test_forwards(self) -> None:
        self.assertEqual(forwards(()), ["jupyter=8080"])
        self.assertEqual(
            forwards(("ssh", "vnc", "jupyter", "x")),
            ["ssh=2222", "vnc=8081", "jupyter=8080", "x=8082"],
        )

    def test_agent_config_paths_are_relative_to_it_and_flags_win(self) -> None:
        config = self.dir / "agent.toml"
        config.write_text(
            'relay = "wss://relay.example.com"\nname = "gpu"\nkey = "agent.key"\n'
            'authorized_keys = "keys/authorized"\nexpose = ["jupyter=8888", "ssh=22"]\n'
            "max_channels = 10\n"
        )
        setup = agent_setup(read_agent_config(str(config)), {"name": "cpu", "expose": []})
        self.assertEqual(setup.name, "cpu")
        self.assertEqual(setup.key, str(self.dir.absolute() / "agent.key"))
        self.assertEqual(setup.authorized_keys, str(self.dir.absolute() / "keys/authorized"))
        self.assertEqual(setup.services, ("jupyter", "ssh"))

    def test_agent_config_refusals(self) -> None:
        config = self.dir / "agent.toml"
        config.write_text('relay = "wss://r"\nnonsense = 1\n')
        error = self.assertRaises(PairSetupError, read_agent_config, str(config))
        self.assertIn("unknown key 'nonsense'", str(error))
        error = self.assertRaises(PairSetupError, agent_setup, {}, {"relay": "wss://r"})
        self.assertIn("--name", str(error))

    async def test_laptop_refuses_to_replace_a_config_before_using_the_code(self) -> None:
        (self.dir / "client.toml").write_text("# mine\n")
        args = _parser().parse_args(
            ["pair", "7-crossover-clockwork", "--relay", "ws://127.0.0.1:1", "--dir", str(self.dir)]
        )
        d = Deferred.fromCoroutine(pair(reactor, args, io.StringIO(), io.StringIO()))
        error = await self.assertFailure(d, PairSetupError)
        self.assertIn("client.toml exists (use --force to replace it)", str(error))
        self.assertEqual((self.dir / "client.toml").read_text(), "# mine\n")
        self.assertFalse((self.dir / "client.key").exists())


class CommandLineTests(unittest.TestCase):
    def test_a_mistake_is_one_line_and_status_2(self) -> None:
        """Checked before any connection: a missing --relay, a mistyped word."""
        for argv, line in [
            (["pair", "7-crossover-clockwork"], "give the relay's URL"),
            (["pair", "7-crossover-clockwrk", "--relay", "ws://127.0.0.1:1"], "'clockwrk' is not"),
        ]:
            out, err = io.StringIO(), io.StringIO()
            self.patch(sys, "stdout", out)
            self.patch(sys, "stderr", err)
            self.assertEqual(main(argv), 2)
            self.assertEqual(len(err.getvalue().splitlines()), 1, err.getvalue())
            self.assertTrue(err.getvalue().startswith("nbbridge: pairing failed: "))
            self.assertIn(line, err.getvalue())
            self.assertEqual(out.getvalue(), "")


class LastingRelayURLTests(unittest.TestCase):
    """client.toml keeps the front's URL when the code named one relay behind it."""

    def test_lasting_relay_url(self) -> None:
        from nbbridge.cli._pair import lasting_relay_url

        self.assertEqual(
            lasting_relay_url("wss://lb.example/r1", "wss://lb.example"), "wss://lb.example"
        )
        self.assertEqual(
            lasting_relay_url("wss://lb.example/r1", "wss://lb.example/"), "wss://lb.example/"
        )
        # Not under the agent's URL: the laptop's own address for the relay is kept.
        self.assertEqual(
            lasting_relay_url("wss://ext.example/", "ws://10.0.0.1:8765"), "wss://ext.example/"
        )
        self.assertEqual(
            lasting_relay_url("wss://lb.example.org/r1", "wss://lb.example"),
            "wss://lb.example.org/r1",
        )
        self.assertEqual(
            lasting_relay_url("wss://lb.example/", "wss://lb.example"), "wss://lb.example/"
        )
