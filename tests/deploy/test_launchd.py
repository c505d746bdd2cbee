"""The shipped launchd agent for the client (macOS): a valid plist whose command line the
client's real option parser accepts."""

from __future__ import annotations

import os
import plistlib

from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from ._units import REPO, materialize, plugin_args

PLIST = REPO / "deploy" / "launchd" / "org.nbbridge.client.plist"


class LaunchdPlistTests(SynchronousTestCase):
    def setUp(self) -> None:
        with PLIST.open("rb") as f:
            self.plist = plistlib.load(f)

    def test_keys(self) -> None:
        self.assertEqual(self.plist["Label"], "org.nbbridge.client")
        self.assertIs(self.plist["RunAtLoad"], True)
        self.assertIs(self.plist["KeepAlive"], True)
        for key in ("StandardOutPath", "StandardErrorPath"):
            self.assertTrue(self.plist[key].startswith("/Users/USERNAME/Library/Logs/"), key)

    def test_program_arguments(self) -> None:
        argv = self.plist["ProgramArguments"]
        self.assertEqual(
            argv[:4], ["/opt/nbbridge/bin/twistd", "--nodaemon", "--pidfile=", "nbbridge-client"]
        )
        flags = {a for a in argv[4:] if a.startswith("--")}
        # Everything else is in ~/.config/nbbridge/client.toml, which `nbbridge pair` writes.
        self.assertEqual(flags, {"--config"})
        self.assertEqual(argv[5], "/Users/USERNAME/.config/nbbridge/client.toml")
        # Paths are absolute: launchd expands neither ~ nor $HOME.
        self.assertFalse([a for a in argv if "~" in a or "$" in a])

    def test_parsed_by_the_client_options(self) -> None:
        from nbbridge.client.tap import Options

        root = os.path.abspath(self.mktemp())
        argv = self.plist["ProgramArguments"]
        args = materialize(plugin_args(argv, "nbbridge-client"), root, {}, "client-config")
        options = Options()
        options.parseOptions(args)
        self.assertEqual(options["relay"], "wss://relay.example.com")
        self.assertEqual(options["agent"], "gpu")

        server = ServerOptions()
        server.parseOptions([*argv[1:4], *args])
        self.assertEqual(server.subCommand, "nbbridge-client")
