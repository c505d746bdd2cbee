"""Config files for nbbridge-client (the rules are TunnelOptions', shared with the agent)."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import TestCase

from nbbridge.client.tap import Options, makeService
from nbbridge.crypto import PrivateKey, write_private_key
from nbbridge.demo import write_secret
from nbbridge.mux import ChannelLimits

from .test_options import refused


class ClientConfigTests(TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        write_private_key(os.path.join(self.dir, "client.key"), PrivateKey.generate())
        write_secret(Path(self.dir, "client.token"), "s3cret")
        self.agent_key = PrivateKey.generate().public_key.to_text()
        self.config = os.path.join(self.dir, "client.toml")
        # The default file: here the test's, never the developer's ~/.config.
        self.patch(Options, "default_config", self.config)

    def write(self, text: str, path: str | None = None) -> str:
        path = path or self.config
        with open(path, "w") as f:
            f.write(text)
        return path

    def full(self) -> str:
        return self.write(
            'relay = "ws://127.0.0.1:8765"\n'
            'agent = "gpu"\n'
            f'agent_key = "{self.agent_key}"\n'
            'key = "client.key"\n'
            'token_file = "client.token"\n'
            'forward = ["jupyter=8080", "ssh=2222"]\n'
            "max_channels = 64\n"
        )

    def test_default_file_needs_no_flags(self) -> None:
        """After pairing, `twistd -n nbbridge-client` runs with no flags at all."""
        self.full()
        o = Options()
        o.parseOptions([])
        self.assertEqual(o["config"], self.config)
        self.assertEqual(o["agent"], "gpu")
        self.assertEqual(o["agent_public_key"].to_text(), self.agent_key)
        # relative paths are relative to the file's directory, not to the working directory
        self.assertEqual(o["key"], os.path.join(self.dir, "client.key"))
        self.assertEqual(o["token"], "s3cret")
        self.assertEqual([service for service, _ in o["forward"]], ["jupyter", "ssh"], o["forward"])
        self.assertEqual(o["forward"][0][1], "tcp:8080:interface=127.0.0.1:backlog=1024")
        self.assertEqual(
            o["channel_limits"], ChannelLimits(64, ChannelLimits().max_pending_accepts)
        )
        service = makeService(o)
        self.assertEqual(
            sorted(type(s).__name__ for s in service if type(s).__name__ != "IdleTrim"),
            ["AgentLink", "ForwardService", "ForwardService", "StatusService"],
        )

    def test_flags_override_the_file_and_lists_replace_it(self) -> None:
        self.full()
        o = Options()
        o.parseOptions(["--agent", "other", "--forward", "lab=9090", "--max-channels", "8"])
        self.assertEqual(o["agent"], "other")
        self.assertEqual([s for s, _ in o["forward"]], ["lab"])
        self.assertEqual(o["channel_limits"].max_channels, 8)
        self.assertEqual(o["relay"], "ws://127.0.0.1:8765")  # the rest still from the file

    def test_explicit_config_file(self) -> None:
        self.patch(Options, "default_config", os.path.join(self.dir, "absent.toml"))
        other = os.path.join(self.dir, "elsewhere.toml")
        os.rename(self.full(), other)
        o = Options()
        o.parseOptions(["--config", other])
        self.assertEqual(o["agent"], "gpu")
        missing = os.path.join(self.dir, "nope.toml")
        self.assertEqual(
            refused(self, ["--config", missing]),
            f"nbbridge-client: cannot read config file {missing}: No such file or directory",
        )

    def test_no_default_file_is_no_error(self) -> None:
        """The default file is read only if it exists; then the flags must say it all."""
        e = self.assertRaises(usage.UsageError, Options().parseOptions, [])
        self.assertEqual(str(e), "--relay is required")

    def test_missing_setting_names_the_file(self) -> None:
        self.write('relay = "ws://127.0.0.1:8765"\nagent = "gpu"\n')
        e = self.assertRaises(usage.UsageError, Options().parseOptions, [])
        self.assertEqual(str(e), f"--key is required (or in {self.config})")

    def test_unknown_key_refused_in_one_line(self) -> None:
        self.full()
        with open(self.config, "a") as f:
            f.write('agnet_key = "typo"\n')
        message = refused(self, [])
        self.assertIn(f"config file {self.config}: unknown key 'agnet_key'", message)
        self.assertIn("agent_key", message)  # the known keys are listed
        self.assertNotIn("authorized_keys", message)  # the agent's, not the client's

    def test_wrong_kind_of_value(self) -> None:
        self.write('forward = "jupyter=8080"\n')
        self.assertIn("forward must be a list of strings", refused(self, []))
        self.write('max_channels = "64"\n')
        self.assertIn("max_channels must be an integer", refused(self, []))
        self.write('insecure = "yes"\n')
        self.assertIn("insecure must be true or false", refused(self, []))

    def test_bad_forward_in_the_file(self) -> None:
        self.write(Path(self.full()).read_text().replace("forward = [", 'forward = ["a b=1", '))
        message = refused(self, [])
        self.assertIn(f"config file {self.config}: --forward a b=1: invalid service name", message)

    def test_invalid_toml(self) -> None:
        self.write("relay = \n")
        self.assertIn(f"config file {self.config} is not valid TOML", refused(self, []))

    def test_writable_by_everyone_refused(self) -> None:
        """The file names the key the client pins: nobody else may change it."""
        self.full()
        os.chmod(self.config, 0o666)
        self.assertIn("chmod o-w", refused(self, []))

    def test_insecure_from_the_file(self) -> None:
        self.full()
        with open(self.config, "a") as f:
            f.write("insecure = true\n")
        o = Options()
        o.parseOptions(["--relay", "ws://relay.example.com"])
        self.assertTrue(o["insecure"])
        self.assertEqual(o["relay_url"].host, "relay.example.com")

    def test_file_problems_in_keys_it_names_are_one_line(self) -> None:
        self.full()
        os.chmod(os.path.join(self.dir, "client.token"), 0o644)
        self.assertIn("chmod 600", refused(self, []))
