"""Integration: the relay serves wss:// through an ssl: endpoint string."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import reactor
from twisted.internet.error import ConnectionLost

from ..transport._certs import CA, write_server_files
from ._harness import RelayTestCase, make_config
from ._ws import Connector, HandshakeFailed


class TLSTests(RelayTestCase):
    """A wss client that trusts the test CA registers, links and splices through TLS."""

    def serve_tls(self) -> tuple[str, bytes]:
        files = write_server_files(os.path.abspath(self.mktemp()))
        return files.ssl_endpoint(), files.ca_pem

    async def test_wss_splice(self) -> None:
        endpoint, ca_pem = self.serve_tls()
        await self.start_relay(make_config(), endpoint=endpoint, ca_pem=ca_pem)
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
        endpoint, ca_pem = self.serve_tls()
        connector = await self.start_relay(make_config(), endpoint=endpoint, ca_pem=ca_pem)
        stranger = Connector(reactor, connector.port, CA.create().cert.public_bytes(Encoding.PEM))
        with self.assertRaises((HandshakeFailed, ConnectionLost)):
            await stranger.connect("/v1/agents/gpu/control", "x")
        for client in stranger.clients:
            await client.lost
