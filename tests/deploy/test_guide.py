"""docs/deploy.md's blocks, pasted into bash as a user would, write files the daemons accept.

Each block that writes nbbridge's files (relay.toml and the tokens, the agent's files, the
client's) runs in a throw-away root: ``sudo`` dropped, ``/etc/nbbridge`` and ``$HOME`` moved
under the test's directory, ``/opt/nbbridge/bin`` the environment's own, the placeholders of
the variables at the top filled in, pasted tokens fed on stdin, and the lines that talk to
systemd left out. What the blocks wrote is then parsed by the daemons' real options.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from nbbridge.crypto import PrivateKey, parse_public_key, write_private_key
from nbbridge.demo import write_secret

from ._units import REPO

GUIDE = REPO / "docs" / "deploy.md"
BIN = os.path.dirname(sys.executable)
#: lines of a block that talk to systemd or the network: not run here
_SKIP = re.compile(r"^(sudo )?(systemctl|journalctl|curl|mkdir -p ~/.config/systemd|cp systemd/)")


def sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", GUIDE.read_text(), flags=re.S)


def block_with(text: str) -> str:
    (found,) = [b for b in sh_blocks() if text in b]
    return found


class GuideTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.etc = os.path.join(self.root, "etc", "nbbridge")
        self.home = os.path.join(self.root, "home")
        os.makedirs(self.home)

    def paste(self, block: str, stdin: str = "", **variables: str) -> str:
        lines = []
        for line in block.splitlines():
            if _SKIP.match(line) or "systemd/nbbridge-" in line:
                continue
            name = line.split("=", 1)[0]
            if name in variables:
                line = f"{name}={variables[name]}"
            lines.append(line)
        script = "\n".join(lines)
        script = script.replace("sudo ", "").replace("/etc/nbbridge", self.etc)
        script = script.replace("/opt/nbbridge/bin/", BIN + "/").replace("~/", "$HOME/")
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            input=stdin,
            capture_output=True,
            text=True,
            env={"HOME": self.home, "PATH": os.environ["PATH"]},
            cwd=self.root,
        )
        self.assertEqual(done.returncode, 0, f"{script}\n{done.stderr}")
        return done.stdout

    def test_relay_agent_and_client_files(self) -> None:
        out = self.paste(block_with("relay.toml >/dev/null"))
        tokens = dict(re.findall(r"token for the (GPU host|laptop): +(\S+)", out))
        relay = tomllib.loads(Path(self.etc, "relay.toml").read_text())
        for section, who in (("agents", "GPU host"), ("clients", "laptop")):
            (entry,) = relay[section].values()
            digest = hashlib.sha256(tokens[who].encode()).hexdigest()
            self.assertEqual(entry["token_sha256"], digest)
        from nbbridge.relay.tap import Options as RelayOptions
        from nbbridge.relay.tap import makeService as relay_service

        relay_options = RelayOptions()
        relay_options.parseOptions(["--config", os.path.join(self.etc, "relay.toml")])
        relay_service(relay_options)

        self.paste(block_with("keygen /etc/nbbridge/agent.key"))
        self.paste(block_with("keygen ~/.config/nbbridge/client.key"))
        client_key = self.paste("/opt/nbbridge/bin/nbbridge pubkey ~/.config/nbbridge/client.key")
        agent_key = self.paste("/opt/nbbridge/bin/nbbridge pubkey /etc/nbbridge/agent.key")

        self.paste(
            block_with("agent.toml >/dev/null"),
            stdin=tokens["GPU host"] + "\n",
            CLIENT_KEY=client_key.strip(),
        )
        from nbbridge.agent.tap import Options as AgentOptions

        agent = AgentOptions()
        # As the unit runs it, the credentials handed over by systemd.
        agent.parseOptions(
            [
                "--config",
                os.path.join(self.etc, "agent.toml"),
                "--token-file",
                os.path.join(self.etc, "agent-token"),
                "--key",
                os.path.join(self.etc, "agent.key"),
            ]
        )
        self.assertEqual(agent["token"], tokens["GPU host"])
        self.assertEqual(len(agent["authorized"]), 1)
        self.assertIn(parse_public_key(client_key.strip()), agent["authorized"])
        self.assertEqual([s for s, _ in agent["expose"]], ["jupyter", "ssh"])

        self.paste(
            block_with("client.toml <<EOF"),
            stdin=tokens["laptop"] + "\n",
            AGENT_KEY=agent_key.strip(),
        )
        from nbbridge.client.tap import Options as ClientOptions

        self.patch(
            ClientOptions, "default_config", os.path.join(self.home, ".config/nbbridge/client.toml")
        )
        client = ClientOptions()
        client.parseOptions([])  # what the user unit and the plist run, with --config
        self.assertEqual(client["token"], tokens["laptop"])
        self.assertEqual(client["agent_public_key"].to_text(), agent_key.strip())
        self.assertEqual(client["relay"], "wss://relay.example.com")


class ReadmeConfigTests(SynchronousTestCase):
    """The README's example config files, with the files they name beside them, are accepted."""

    def example(self, first_line: str) -> str:
        blocks = re.findall(r"```toml\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
        (found,) = [b for b in blocks if b.startswith(first_line)]
        return found

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def test_client_example(self) -> None:
        from nbbridge.client.tap import Options

        write_private_key(os.path.join(self.dir, "client.key"), PrivateKey.generate())
        write_secret(Path(self.dir, "client.token"), "t")
        agent_key = PrivateKey.generate().public_key.to_text()
        text = self.example("# ~/.config/nbbridge/client.toml")
        config = Path(self.dir, "client.toml")
        config.write_text(text.replace("nbb1...the-agent's-public-key...", agent_key))
        self.patch(Options, "default_config", str(config))
        options = Options()
        options.parseOptions([])
        self.assertEqual([s for s, _ in options["forward"]], ["jupyter", "ssh"])

    def test_agent_example(self) -> None:
        from nbbridge.agent.tap import Options

        write_private_key(os.path.join(self.dir, "agent.key"), PrivateKey.generate())
        write_secret(Path(self.dir, "agent.token"), "t")
        Path(self.dir, "authorized_keys").write_text(
            PrivateKey.generate().public_key.to_text() + " laptop\n"
        )
        config = Path(self.dir, "agent.toml")
        config.write_text(self.example("# /etc/nbbridge/agent.toml"))
        options = Options()
        options.parseOptions(["--config", str(config)])
        self.assertEqual([s for s, _ in options["expose"]], ["jupyter", "ssh"])
