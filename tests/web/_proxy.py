"""A proxy under test: `ProxyResource` in a Site on 127.0.0.1, a client, upstream helpers.

Everything listens on loopback port 0 and is stopped by the test's clean-up, which waits
until every connection to the proxy has closed.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from nbbridge.web import ProxyResource, ProxyStats, Router, Upstream, UpstreamPool
from tests._loopback import LOOPBACK, serve


@implementer(IStreamClientEndpoint)
class CountingEndpoint:
    """An endpoint that counts the connections made through it."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint
        self.connections = 0

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.connections += 1
        return self._endpoint.connect(factory)


@implementer(IStreamClientEndpoint)
class BlackHoleEndpoint:
    """An endpoint whose connection attempts never finish (until cancelled)."""

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred()


def tcp(port: int) -> CountingEndpoint:
    return CountingEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", port))


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProxyTestCase(TestCase):
    """Starts proxies in front of upstreams; closes every pool and connection at the end."""

    timeout = 180

    async def start_proxy(
        self,
        router: Router,
        *,
        connect_timeout: float = 10,
        wrap_site: Callable[[Site], Any] | None = None,
        **options: Any,
    ) -> str:
        """A proxy on 127.0.0.1 routing with ROUTER; returns its base URL (no slash).

        :param wrap_site: wraps the Site's factory (a `ConnectionTracker`, as the fronts do).
        """
        self.pool = UpstreamPool(reactor, connect_timeout=connect_timeout)
        self.stats = ProxyStats()
        self.proxy = ProxyResource(router, self.pool, stats=self.stats, **options)
        site = Site(self.proxy)
        port = await serve(self, LOOPBACK, wrap_site(site) if wrap_site else site)
        # Registered after `serve`, so run before its wait for idle connections.
        client_pool = HTTPConnectionPool(reactor)
        self.http = HTTPClient(Agent(reactor, pool=client_pool))
        self.addCleanup(self.pool.close)
        self.addCleanup(client_pool.closeCachedConnections)
        self.proxy_port = port
        return f"http://127.0.0.1:{port}"

    async def start_upstream(self, resource: Resource) -> int:
        """A twisted.web server on 127.0.0.1 serving RESOURCE; returns its port."""
        return await serve(self, LOOPBACK, Site(resource))

    async def text(self, response: Any) -> bytes:
        return await treq.content(response)  # type: ignore[no-any-return]


def to(upstream: Upstream, **route: Any) -> Callable[[Any], Any]:
    """A router sending every request to UPSTREAM."""
    from nbbridge.web import Route

    def router(request: Any) -> Route:
        return Route(upstream, **route)

    return router
