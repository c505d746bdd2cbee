"""A relay on real loopback TCP for integration tests, stopped and drained after each test."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime
from twisted.protocols.policies import ProtocolWrapper
from twisted.trial import unittest

from nbbridge._secrets import token_digest
from nbbridge.contract import Registered, control_path, data_path, link_path, parse_control_message
from nbbridge.relay import hash_token
from nbbridge.relay._auth import Authority
from nbbridge.relay._config import Limits, RelayConfig, parse_config
from nbbridge.relay._core import Relay
from nbbridge.relay._protocol import DataProtocol, LinkProtocol, RelayWebSocket
from nbbridge.relay._service import RelayService
from nbbridge.relay.tap import mounts
from tests._cleanup import add_async_cleanup

from ._ws import Connector, TestClient

AGENT_TOKEN = "agent-gpu-token-0123456789"
OTHER_AGENT_TOKEN = "agent-cpu-token-0123456789"
CLIENT_TOKEN = "client-laptop-token-0123456789"
LIMITED_CLIENT_TOKEN = "client-phone-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789"


def make_config(limits: dict[str, Any] | None = None) -> RelayConfig:
    """Agents gpu and cpu; client laptop reaches all, client phone only cpu."""
    return parse_config(
        {
            "agents": {
                "gpu": {"token_sha256": hash_token(AGENT_TOKEN)},
                "cpu": {"token_sha256": hash_token(OTHER_AGENT_TOKEN)},
            },
            "clients": {
                "laptop": {"token_sha256": hash_token(CLIENT_TOKEN), "agents": ["*"]},
                "phone": {"token_sha256": hash_token(LIMITED_CLIENT_TOKEN), "agents": ["cpu"]},
            },
            "limits": limits or {},
        },
        "test.toml",
    )


class FileTestCase(unittest.TestCase):
    """A test case that writes files (a relay.toml, say) under its own temporary path."""

    def write(self, text: str, mode: int | None = None) -> str:
        """A new file holding TEXT (with permissions MODE, if given); returns its path."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        if mode is not None:
            os.chmod(path, mode)
        return path


def write_buffered(protocol: Any) -> int:
    """Bytes the relay holds for one connection: its unsent output and its unparsed input."""
    transport = protocol.transport
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    held = 0
    if transport is not None:
        held = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    held += len(getattr(protocol, "data", b"") or b"")
    held += sum(len(p) for p in getattr(protocol, "message_data", None) or [])
    return held


class RelayTestCase(unittest.TestCase):
    """Starts relays on 127.0.0.1:0; every relay and client is closed and drained afterwards."""

    timeout = 60

    async def start_relay(
        self,
        config: RelayConfig | None = None,
        *,
        clock: IReactorTime | None = None,
        admin_token: str | None = None,
        limits: Limits | None = None,
        endpoint: str = "tcp:0:interface=127.0.0.1",
        ca_pem: bytes | None = None,
    ) -> Connector:
        authority = Authority(config)
        if limits is None:
            limits = config.limits if config is not None else Limits()
        self.relay = Relay(authority, limits, clock or reactor)
        self.service = RelayService(
            self.relay,
            serverFromString(reactor, endpoint),
            reactor=reactor,
            secure=ca_pem is not None,
            admin_sha256=token_digest(admin_token) if admin_token else None,
            mounts=mounts(config),
        )
        self.service.startService()
        port = await self.service.when_listening()
        self.connector = Connector(reactor, port.getHost().port, ca_pem)
        add_async_cleanup(self, self._stop_relay)
        return self.connector

    async def _stop_relay(self) -> None:
        await self.service.stopService()
        await self.connector.all_lost()

    def relay_side(self, kind: type[RelayWebSocket]) -> list[Any]:
        """The relay's own protocols of KIND, as its connection tracker sees them."""
        return [p for p in self.service.connections.open_protocols() if isinstance(p, kind)]

    async def agent(
        self, name: str = "gpu", token: str = AGENT_TOKEN, registered: bool = True
    ) -> TestClient:
        """An agent's control connection; by default once the relay said it is registered."""
        control = await self.connector.connect(control_path(name), token)
        if not registered:
            return control
        payload, is_binary = await control.messages.get()
        self.assertEqual((parse_control_message(payload), is_binary), (Registered(name), False))
        return control

    async def link(
        self,
        control: TestClient,
        name: str = "gpu",
        client_token: str = CLIENT_TOKEN,
        agent_token: str = AGENT_TOKEN,
    ) -> tuple[TestClient, TestClient]:
        """Open a client link, answer the dial as the agent: (client side, agent data side)."""
        client = await self.connector.connect(link_path(name), client_token)
        payload, is_binary = await control.messages.get()
        self.assertFalse(is_binary)
        dial = parse_control_message(payload)
        data = await self.connector.connect(data_path(name, dial.link_id), agent_token)
        return client, data

    def spliced_ends(self) -> tuple[LinkProtocol, DataProtocol]:
        [link] = self.relay_side(LinkProtocol)
        [data] = self.relay_side(DataProtocol)
        return link, data
