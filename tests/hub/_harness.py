"""A relay with its hub on real loopback TCP, plus the waiting helpers the hub tests share."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import HTTPConnectionPool

from nbbridge.hub._core import Hub, Member
from nbbridge.relay._config import parse_config
from nbbridge.relay.tap import SECTIONS

from ..relay._harness import RelayTestCase
from ..relay._ws import Connector, TestClient
from ..transport._certs import write_server_files


def message(seq: int, size: int) -> bytes:
    """Message SEQ of SIZE bytes: its number first, so receivers can check order and gaps."""
    return seq.to_bytes(8, "big") + bytes([seq % 251]) * (size - 8)


def seq_of(payload: bytes) -> int:
    return int.from_bytes(payload[:8], "big")


class HubTestCase(RelayTestCase):
    """Starts a relay whose relay.toml has HUB as its [hub] section."""

    async def start_hub(
        self, hub: dict[str, Any] | None = None, clock: IReactorTime | None = None
    ) -> Connector:
        """The relay, with CLOCK (default: the reactor) as its and its hub's time."""
        config = parse_config({"hub": hub or {}}, "test.toml", SECTIONS)
        connector = await self.start_relay(config, clock=clock)
        self.hub: Hub = self.service.connections.wrappedFactory.extensions["hub"].hub
        return connector

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.connector.port}"

    async def join(self, path: str, token: str | None = None) -> TestClient:
        """A WebSocket on PATH, open (and, unless refused, a member of its topic)."""
        return await self.connector.connect(path, token)

    async def join_with(self, path: str, headers: dict[str, str]) -> TestClient:
        """A WebSocket on PATH whose handshake carries HEADERS (a cookie, say), open."""
        factory = WebSocketClientFactory(self.connector.url(path), headers=headers, reactor=reactor)
        factory.protocol = TestClient
        factory.setProtocolOptions(autoFragmentSize=0, failByDrop=False)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.connector.port)
        client: TestClient = await endpoint.connect(factory)
        self.connector.clients.append(client)
        await client.opened
        return client

    def when(
        self, event: str, predicate: Callable[[Member], bool] = lambda m: True
    ) -> Deferred[Member]:
        """Fires the first time the hub reports EVENT for a member PREDICATE accepts."""
        d: Deferred[Member] = Deferred()

        def observe(name: str, member: Member) -> None:
            if name == event and not d.called and predicate(member):
                remove()
                d.callback(member)

        remove = self.hub.add_observer(observe)
        self.addCleanup(lambda: remove() if not d.called else None)
        return d

    def member(self, path: str) -> list[Member]:
        """The hub's members on the route PATH."""
        return [m for m in self.hub.members() if m.route.path(self.hub.config.prefix) == path]

    async def http_get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, list[str]], bytes]:
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        response = await treq.get(
            self.http_url + path, headers=headers or {}, pool=pool, allow_redirects=False
        )
        body = await response.content()
        headers_out = {
            k.decode("latin-1").lower(): [v.decode("latin-1") for v in vs]
            for k, vs in response.headers.getAllRawHeaders()
        }
        return response.code, headers_out, body

    async def http_post(
        self, path: str, form: dict[str, str]
    ) -> tuple[int, dict[str, list[str]], bytes]:
        """POST FORM (urlencoded) to PATH; the answer as it came (redirects not followed)."""
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        response = await treq.post(
            self.http_url + path, data=form, pool=pool, allow_redirects=False
        )
        body = await response.content()
        headers_out = {
            k.decode("latin-1").lower(): [v.decode("latin-1") for v in vs]
            for k, vs in response.headers.getAllRawHeaders()
        }
        return response.code, headers_out, body


class OverTLS:
    """Mix in before a HubTestCase: the relay serves wss:// (its own test CA), clients verify."""

    async def start_relay(self, *args: Any, **kwargs: Any) -> Any:
        files = write_server_files(os.path.abspath(self.mktemp()))  # type: ignore[attr-defined]
        kwargs.update(endpoint=files.ssl_endpoint(), ca_pem=files.ca_pem)
        return await super().start_relay(*args, **kwargs)  # type: ignore[misc]


async def collect(client: Any, count: int) -> list[tuple[bytes, bool]]:
    """The next COUNT messages CLIENT (anything with a `messages` DeferredQueue) receives."""
    return [await client.messages.get() for _ in range(count)]
