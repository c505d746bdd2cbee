"""The whole tunnel over TLS: behind the shipped nginx config, and with the relay's own TLS."""

from __future__ import annotations

import os

from twisted.internet import reactor

from nbbridge.relay import tap as relay_tap

from ..deploy._nginx import start_nginx
from ..transport._certs import write_server_files
from . import _tcp
from ._harness import TunnelTestCase


class TLSTunnelTests(TunnelTestCase):
    async def test_through_real_nginx(self) -> None:
        """Agent and client reach the relay through nginx (TLS, WebSocket upgrade)."""
        port, _ = await self.serve(_tcp.Echo)
        await self.start_relay()
        https_port, ca = await start_nginx(self, self.relay_port)
        url = f"wss://localhost:{https_port}"
        await self.start_agent({"echo": str(port)}, relay_url=url, extra=["--ca", ca])
        client = await self.start_client(relay_url=url, extra=["--ca", ca])
        await self.echo_once(client.port(), size=3 * 1024 * 1024)
        status = await self.status()
        self.assertEqual(status["agents_online"], 1)

    async def test_relay_serves_tls_itself(self) -> None:
        """--listen ssl:... on the relay; agent and client verify it against --ca."""
        port, _ = await self.serve(_tcp.Echo)
        tls = write_server_files(os.path.abspath(self.mktemp()), ("localhost",))
        options = relay_tap.Options()
        args = self.relay_args()
        args[1] = f"ssl:0:interface=127.0.0.1:privateKey={tls.key}:certKey={tls.cert}"
        options.parseOptions(args)
        service = relay_tap.makeService(options, reactor)
        service.startService()
        self.relay = service
        listening = await service.when_listening()
        self.relay_port = listening.getHost().port
        url = f"wss://localhost:{self.relay_port}"
        await self.start_agent({"echo": str(port)}, relay_url=url, extra=["--ca", tls.ca])
        client = await self.start_client(relay_url=url, extra=["--ca", tls.ca])
        await self.echo_once(client.port(), size=1024 * 1024)
