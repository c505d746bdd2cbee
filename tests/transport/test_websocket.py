"""Autobahn WebSocket factories: options, and a real wss:// round trip on loopback."""

from __future__ import annotations

import os

from autobahn.exception import PayloadExceededError
from autobahn.twisted.websocket import WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nbbridge.transport import (
    MAX_MESSAGE_SIZE,
    client_endpoint,
    parse_relay_url,
    websocket_client_factory,
    websocket_options,
)

from ._certs import write_server_files
from ._servers import LINK_ROUTE, EchoClientProtocol, echo_site, http_get, serve_tls

TOKEN = "s3cret-token-for-tests"


class FactoryOptionTests(SynchronousTestCase):
    def test_link_options(self) -> None:
        factory = websocket_client_factory(
            "wss://relay.example.com/v1/agents/gpu/link",
            {"Authorization": f"Bearer {TOKEN}"},
            WebSocketClientProtocol,
        )
        self.assertIs(factory.protocol, WebSocketClientProtocol)
        self.assertEqual(factory.maxMessagePayloadSize, 2 * 1024 * 1024)
        self.assertEqual(factory.maxFramePayloadSize, 2 * 1024 * 1024)
        self.assertEqual(factory.autoFragmentSize, 0)
        self.assertEqual(factory.autoPingInterval, 20)
        self.assertEqual(factory.autoPingTimeout, 20)
        self.assertEqual(factory.openHandshakeTimeout, 10)
        self.assertFalse(factory.failByDrop)
        self.assertFalse(factory.utf8validateIncoming)
        self.assertTrue(factory.applyMask)
        self.assertTrue(factory.maskClientFrames)
        self.assertEqual(factory.perMessageCompressionOffers, [])
        self.assertEqual(factory.headers, {"Authorization": f"Bearer {TOKEN}"})
        self.assertNotIn(TOKEN, factory.url)
        self.assertTrue(factory.isSecure)
        self.assertEqual((factory.host, factory.port), ("relay.example.com", 443))

    def test_no_log_lines_per_connection(self) -> None:
        """A factory is made per connection: starting and stopping it logs nothing."""
        factory = websocket_client_factory(
            "wss://relay.example.com/v1/agents/gpu/link", {}, WebSocketClientProtocol
        )
        with capturedLogs() as events:
            factory.doStart()
            factory.doStop()
        self.assertEqual([formatEvent(e) for e in events], [])

    def test_text_connections_validate_utf8(self) -> None:
        factory = websocket_client_factory(
            "wss://relay.example.com/v1/agents/gpu/control", {}, WebSocketClientProtocol, text=True
        )
        self.assertTrue(factory.utf8validateIncoming)
        self.assertTrue(websocket_options(text=True)["utf8validateIncoming"])

    def test_credentials_in_url_refused(self) -> None:
        for url in (
            "wss://user:pw@relay.example.com/v1/agents/gpu/link",
            "wss://relay.example.com/v1/agents/gpu/link?token=abc",
            "wss://relay.example.com/v1/agents/gpu/link?x=1&access_token=abc",
        ):
            e = self.assertRaises(
                ValueError, websocket_client_factory, url, {}, WebSocketClientProtocol
            )
            self.assertIn("header", str(e))
            self.assertNotIn("abc", str(e))


def _close(protocol: EchoClientProtocol) -> Deferred[object]:
    """Clean-up: close the client if a failed test left it open, and wait until it is closed."""
    if not protocol.closed.called and protocol.transport is not None:
        protocol.transport.abortConnection()  # type: ignore[attr-defined]
    return protocol.closed  # type: ignore[return-value]


class WebSocketOverTLSTests(TestCase):
    """An autobahn wss client (our endpoint + factory) and an autobahn wss server."""

    async def _start(self) -> tuple[int, str, list]:  # type: ignore[type-arg]
        directory = self.mktemp()
        os.makedirs(directory)
        files = write_server_files(directory)
        site, ws = echo_site()
        port = await serve_tls(self, files, site)
        return port, files.ca, ws.requests

    async def _open(self, port: int, ca: str, **options: object) -> EchoClientProtocol:
        relay = parse_relay_url(f"wss://localhost:{port}", insecure=False)
        factory = websocket_client_factory(
            relay.url_for(LINK_ROUTE), {"Authorization": f"Bearer {TOKEN}"}, EchoClientProtocol
        )
        if options:
            factory.setProtocolOptions(**options)
        protocol = await client_endpoint(reactor, relay, ca).connect(factory)
        assert isinstance(protocol, EchoClientProtocol)
        self.addCleanup(_close, protocol)
        await protocol.opened
        return protocol

    async def test_binary_round_trip(self) -> None:
        port, ca, requests = await self._start()
        client = await self._open(port, ca)
        messages = [b"", b"\x00\xff" * 7, os.urandom(64 * 1024), os.urandom(MAX_MESSAGE_SIZE)]
        for m in messages:
            client.sendMessage(m, isBinary=True)
        echoed = await client.wait_messages(len(messages))
        self.assertEqual(echoed, [(m, True) for m in messages])

        (request,) = requests
        self.assertEqual(request.path, LINK_ROUTE)
        self.assertEqual(request.headers["authorization"], f"Bearer {TOKEN}")
        self.assertTrue(request.headers["user-agent"].startswith("nbbridge/"))
        self.assertNotIn(TOKEN, request.path)
        self.assertEqual(request.params, {})

        client.sendClose(1000, "done")
        was_clean, code, _ = await client.closed
        self.assertTrue(was_clean)
        self.assertEqual(code, 1000)

    async def test_too_big_message_refused_by_sender(self) -> None:
        port, ca, _ = await self._start()
        client = await self._open(port, ca)
        self.assertRaises(
            PayloadExceededError, client.sendMessage, b"x" * (MAX_MESSAGE_SIZE + 1), True
        )

    async def test_too_big_message_closes(self) -> None:
        port, ca, _ = await self._start()
        # A peer without our limits: the receiver's limit (the shared options) must hold.
        client = await self._open(port, ca, maxMessagePayloadSize=0, maxFramePayloadSize=0)
        client.sendMessage(b"x" * (MAX_MESSAGE_SIZE + 1), isBinary=True)
        _, code, reason = await client.closed
        self.assertEqual(code, 1009)  # "message too big", with a reason the sender can log
        self.assertIn("2097152", reason or "")

    async def test_http_get_on_the_same_port(self) -> None:
        port, ca, _ = await self._start()
        relay = parse_relay_url(f"wss://127.0.0.1:{port}", insecure=False)
        status, headers, body = await http_get(
            client_endpoint(reactor, relay, ca), f"127.0.0.1:{port}", "/status"
        )
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/json")
        self.assertIn(b'"ok": true', body)
