"""Integration: GET /status, public counters and the admin's per-agent list."""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogPublisher
from twisted.web.client import HTTPConnectionPool

from nbbridge import __version__

from ._harness import ADMIN_TOKEN, AGENT_TOKEN, CLIENT_TOKEN, RelayTestCase, make_config


class StatusTests(RelayTestCase):
    """/status counts agents, links and bytes; the admin token adds each agent."""

    async def get_status(self, token: str | None = None) -> tuple[int, Any, bytes]:
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await treq.get(
            self.connector.url("/status").replace("ws", "http", 1), headers=headers, pool=pool
        )
        body = await response.content()
        content_type = response.headers.getRawHeaders("content-type")
        self.assertEqual(content_type, ["application/json"])
        return response.code, json.loads(body), body

    async def test_counts(self) -> None:
        await self.start_relay(make_config(), admin_token=ADMIN_TOKEN)
        code, status, _ = await self.get_status()
        self.assertEqual(code, 200)
        self.assertEqual(
            status, {"version": __version__, "agents_online": 0, "links": 0, "bytes": 0}
        )

        control = await self.agent()
        client, data = await self.link(control)
        client.sendMessage(b"12345", isBinary=True)
        await data.messages.get()
        _, status, _ = await self.get_status()
        self.assertEqual(status["agents_online"], 1)
        self.assertEqual(status["links"], 1)
        self.assertEqual(status["bytes"], 5)
        self.assertNotIn("agents", status)

    async def test_admin_listing(self) -> None:
        await self.start_relay(make_config(), admin_token=ADMIN_TOKEN)
        control = await self.agent()
        client, data = await self.link(control)
        data.sendMessage(b"abc", isBinary=True)
        await client.messages.get()
        code, status, body = await self.get_status(ADMIN_TOKEN)
        self.assertEqual(code, 200)
        [agent] = status["agents"]
        self.assertEqual(agent["name"], "gpu")
        self.assertEqual(agent["links"], 1)
        self.assertEqual(agent["bytes"], 3)
        self.assertRegex(agent["since"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")
        for secret in (ADMIN_TOKEN, AGENT_TOKEN, CLIENT_TOKEN):
            self.assertNotIn(secret.encode(), body)

    async def test_wrong_admin_token(self) -> None:
        await self.start_relay(make_config(), admin_token=ADMIN_TOKEN)
        code, status, _ = await self.get_status("not-the-admin")
        self.assertEqual(code, 401)
        self.assertEqual(status, {"error": "admin token not recognised"})

    async def test_no_admin_configured(self) -> None:
        await self.start_relay(make_config())
        code, status, _ = await self.get_status(ADMIN_TOKEN)
        self.assertEqual(code, 200)
        self.assertNotIn("agents", status)

    async def test_unknown_path_is_404(self) -> None:
        await self.start_relay(make_config())
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        base = self.connector.url("").replace("ws", "http", 1)
        for path in ("/", "/statusx", "/v1/agents/gpu/control/extra"):
            response = await treq.get(base + path, pool=pool)
            await response.content()
            self.assertEqual(response.code, 404, path)


class _Raw(Protocol):
    """Sends one request, collects the whole reply until the server closes."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self.reply = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self.reply += data

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(self.reply)


class RequestBodyTests(RelayTestCase):
    """The relay refuses request bodies it would only have to spool."""

    async def test_big_body_is_refused(self) -> None:
        connector = await self.start_relay(make_config())
        raw = _Raw(
            b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n" + b"x" * 1000
        )
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", connector.port), raw)
        reply = await raw.done
        self.assertTrue(reply.startswith(b"HTTP/1.1 413 "), reply)

    async def test_non_ascii_uri_is_400_without_a_traceback(self) -> None:
        """Found by the relay_http fuzz target: twisted.web failed on it with a logged 500."""
        connector = await self.start_relay(make_config())
        errors: list[object] = []
        observer = lambda event: errors.append(event) if event.get("isError") else None  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        raw = _Raw(b"POST \xafstatus HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", connector.port), raw)
        reply = await raw.done
        self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), reply)
        self.assertIn(b"request URI must be ASCII", reply)
        self.assertEqual(errors, [])
