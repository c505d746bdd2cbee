"""--target agent:NAME/SERVICE: the gateway reaches a service behind a real relay and agent."""

from __future__ import annotations

from twisted.internet.protocol import Protocol

from ..tunnel._harness import TunnelTestCase
from ._harness import RFB_GREETING, open_ws, start_gateway


class _Greeter(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(RFB_GREETING)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class AgentTargetTests(TunnelTestCase):
    async def test_websocket_to_agent_service(self) -> None:
        await self.start_relay()
        port, _ = await self.serve(_Greeter)
        await self.start_agent({"vnc": f"tcp:127.0.0.1:{port}"})
        gw = await start_gateway(
            self,
            [
                "--target", "agent:gpu/vnc",
                "--relay", self.relay_url,
                "--agent-key", self.files.public("agent"),
                "--token-file", self.files.token_files["laptop"],
                "--tunnel-key", self.files.key_files["client"],
                "0",
            ],
        )  # fmt: skip
        client = await open_ws(self, gw.ws_port, "/websockify")
        self.assertEqual(await client.messages.get(), (RFB_GREETING, True))
        client.sendMessage(b"through the tunnel", isBinary=True)
        self.assertEqual(await client.messages.get(), (b"through the tunnel", True))
        client.close(1000, "done")
        await client.lost
