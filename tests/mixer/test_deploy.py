"""The mixer's user unit and launchd plist: their command lines parse with the real options."""

from __future__ import annotations

import os
import plistlib
import shlex
from pathlib import Path

from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from nbbridge.crypto import PrivateKey, write_private_key
from nbbridge.mixer.tap import Options

REPO = Path(__file__).resolve().parents[2]


def write_secret(path: Path, text: str) -> None:
    path.write_text(text + "\n")
    path.chmod(0o600)


def _config(home: str) -> str:
    """~/.config/nbbridge/mixer.toml as docs/mixer.md shows it, with its files."""
    directory = os.path.join(home, ".config", "nbbridge")
    os.makedirs(directory, mode=0o700)
    key = PrivateKey.generate()
    write_private_key(os.path.join(directory, "mixer.key"), key)
    for name in ("jupyter.token", "client.token", "gpu-jupyter.token"):
        write_secret(Path(directory, name), "t-" + name)
    path = os.path.join(directory, "mixer.toml")
    with open(path, "w") as f:
        f.write(
            "port = 8889\njupyter_port = 8888\n"
            'jupyter_token_file = "jupyter.token"\n'
            'relay = "wss://relay.example.com"\nkey = "mixer.key"\ntoken_file = "client.token"\n'
            'remote = ["gpu=agent:gpu/jupyter"]\n'
            f'agent_key = ["gpu={key.public_key.to_text()}"]\n'
            f'remote_token_file = ["gpu={directory}/gpu-jupyter.token"]\n'
        )
    return path


class DeployTests(SynchronousTestCase):
    def check(self, argv: list[str], home_marker: str) -> None:
        home = os.path.abspath(self.mktemp())
        config = _config(home)
        self.assertEqual(
            argv[:4], ["/opt/nbbridge/bin/twistd", "--nodaemon", "--pidfile=", "nbbridge-mixer"]
        )
        args = [a.replace(home_marker, home) for a in argv[4:]]
        self.assertEqual(args, ["--config", config])
        options = Options()
        options.parseOptions(args)
        self.assertEqual(options["jupyter_token"], "t-jupyter.token")
        self.assertEqual(options["remote_tokens"], {"gpu": "t-gpu-jupyter.token"})
        self.assertEqual(options["interface"], "127.0.0.1")
        server = ServerOptions()
        server.parseOptions([*argv[1:4], *args])
        self.assertEqual(server.subCommand, "nbbridge-mixer")

    def test_systemd_user_unit(self) -> None:
        text = (REPO / "systemd" / "nbbridge-mixer.service").read_text()
        line = text.split("ExecStart=", 1)[1].split("\nRestart", 1)[0].replace("\\\n", " ")
        self.check(shlex.split(line), "%h")
        self.assertIn("WantedBy=default.target", text)

    def test_launchd_plist(self) -> None:
        with (REPO / "deploy" / "launchd" / "org.nbbridge.mixer.plist").open("rb") as f:
            plist = plistlib.load(f)
        self.assertEqual(plist["Label"], "org.nbbridge.mixer")
        self.check(plist["ProgramArguments"], "/Users/USERNAME")

    def test_non_loopback_needs_the_flag(self) -> None:
        from twisted.python.usage import UsageError

        with self.assertRaises(UsageError):
            Options().parseOptions(["--interface", "0.0.0.0", "--jupyter-token", "x"])
        options = Options()
        options.parseOptions(
            ["--interface", "0.0.0.0", "--allow-remote-access", "--jupyter-token", "x"]
        )
