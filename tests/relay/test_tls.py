"""Integration: the relay serves wss:// through an ssl: endpoint string."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.error import ConnectionLost

from ._certs import TestCA
from ._harness import RelayTestCase, make_config
from ._ws import Connector, HandshakeFailed


class TLSTests(RelayTestCase):
    """A wss client that trusts the test CA registers, links and splices through TLS."""

    def serve_tls(self) -> tuple[str, TestCA]:
        directory = self.mktemp()
        os.makedirs(directory)
        ca = TestCA.create()
        key_path, cert_path = ca.issue("localhost", ips=["127.0.0.1"]).write(directory)
        return f"ssl:0:privateKey={key_path}:certKey={cert_path}:interface=127.0.0.1", ca

    async def test_wss_splice(self) -> None:
        endpoint, ca = self.serve_tls()
        await self.start_relay(make_config(), endpoint=endpoint, ca_pem=ca.cert_pem)
        control = await self.agent()
        client, data = await self.link(control)
        big = os.urandom(1024 * 1024)
        client.sendMessage(big, isBinary=True)
        data.sendMessage(b"back", isBinary=False)
        self.assertEqual(await data.messages.get(), (big, True))
        self.assertEqual(await client.messages.get(), (b"back", False))
        self.assertTrue(client.factory.url.startswith("wss://localhost:"))
        self.assertIsNotNone(client.tcp.getPeerCertificate())

    async def test_untrusted_ca_fails(self) -> None:
        endpoint, ca = self.serve_tls()
        connector = await self.start_relay(make_config(), endpoint=endpoint, ca_pem=ca.cert_pem)
        stranger = Connector(reactor, connector.port, TestCA.create().cert_pem)
        with self.assertRaises((HandshakeFailed, ConnectionLost)):
            await stranger.connect("/v1/agents/gpu/control", "x")
        for client in stranger.clients:
            await client.lost
