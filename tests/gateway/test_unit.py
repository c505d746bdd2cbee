"""systemd/nbbridge-gateway.service: systemd-analyze accepts it, and its command line parses
with the gateway's real options."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from nbbridge.gateway.tap import Options

from ..deploy import test_systemd as _systemd  # (a module: trial must not run its tests here)
from ..deploy._units import SYSTEMD, exec_start, plugin_args, read_unit

UNIT = "nbbridge-gateway.service"


class GatewayUnitTests(TestCase):
    setUp = _systemd.VerifyTests.setUp
    _verify = _systemd.VerifyTests._verify

    async def test_verify(self) -> None:
        await self._verify(UNIT, user=False)

    def test_command_line_parses(self) -> None:
        unit = read_unit(SYSTEMD / UNIT)
        args = plugin_args(exec_start(unit), "nbbridge-gateway")
        options = Options()
        options.parseOptions(args)
        self.assertEqual(options["ws_server_port"], 8080)
        self.assertEqual(options["interface"], "127.0.0.1")
        self.assertIn("ProtectSystem", unit["Service"])
