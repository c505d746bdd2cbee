"""The installed twistd knows the nbbridge commands, and `make demo` works end to end."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests._tools import skip_unavailable

BIN = os.path.dirname(sys.executable)


class PluginTests(TestCase):
    def test_twistd_lists_commands(self) -> None:
        out = subprocess.run(
            [os.path.join(BIN, "twistd"), "--help"], capture_output=True, text=True, check=True
        ).stdout
        daemons = ("relay", "agent", "client", "datalab", "gateway", "mixer")
        for name in daemons:
            self.assertIn(f"nbbridge-{name}", out)

    def test_discovery_imports_no_service(self) -> None:
        """twistd's plugin discovery must stay cheap: no service module is imported."""
        code = (
            "import sys, twisted.plugins.nbbridge_plugins;"
            "print(sorted(m for m in sys.modules if m.startswith('nbbridge')))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        self.assertEqual(out.strip(), "[]")


class DemoTests(TestCase):
    timeout = 180

    async def test_demo_reaches_jupyter_through_the_tunnel(self) -> None:
        """`make demo`'s script, with --check: real twistd processes and a real Jupyter."""
        try:
            import jupyter_server  # noqa: F401
        except ImportError:
            skip_unavailable("jupyter-server is not installed")
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "nbbridge.demo", "--check"],
            env=dict(os.environ),
            reactor=reactor,
        )
        text = out.decode() + err.decode()
        self.assertEqual(code, 0, text)
        self.assertIn("Jupyter answered through the tunnel", text)
        self.assertIn("/lab?token=", text)
