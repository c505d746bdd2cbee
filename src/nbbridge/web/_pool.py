"""Kept-alive HTTP/1.1 connections to upstreams, a few per upstream, over any endpoint.

twisted.web's `Agent` with an `HTTPConnectionPool` does the HTTP client work (persistent
connections, chunked bodies, one retry of an idempotent request on a connection that the
upstream had closed meanwhile). It only knows URIs, so each `Upstream` gets a synthetic host
name, ``u<N>.nbbridge-upstream``, that the endpoint factory maps back to the upstream's
endpoint; the pool keys its connections by that name, i.e. by ``Upstream.name``. The host
name never reaches the upstream: the proxy always sends a ``Host`` header of its own.

Every connection attempt is bounded by the connect timeout, whatever the endpoint does.

The Agent's protocol (`HTTP11ClientProtocol.abort`, used by ``closeCachedConnections``) assumes
that a transport's ``connectionLost`` comes on a later turn than ``loseConnection``, as TCP's
does; a mux channel calls it from inside ``loseConnection``, and the abort then waits forever.
So pool connections hear of their end one turn later (`_LaterLoss`), over any endpoint.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from nbbridge._tuning import tune

from ._route import Upstream

_HOST_SUFFIX = b".nbbridge-upstream"


class ConnectTimeout(Exception):
    """The upstream's endpoint did not connect within the connect timeout."""


@implementer(IStreamClientEndpoint)
class TimeoutEndpoint:
    """ENDPOINT, but a connection attempt that takes longer than TIMEOUT seconds fails."""

    def __init__(self, endpoint: IStreamClientEndpoint, timeout: float, clock: IReactorTime):
        self._endpoint = endpoint
        self._timeout = timeout
        self._clock = clock

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        d = self._endpoint.connect(factory)

        def timed_out(result: Any, timeout: float) -> Any:
            raise ConnectTimeout(f"no connection within {timeout:g} s")

        d.addTimeout(self._timeout, self._clock, onTimeoutCancel=timed_out)
        return d


class _LaterLoss(ProtocolWrapper):
    """Passes the end of the connection on one reactor turn later (see the module docstring)."""

    factory: _LaterLossFactory

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.clock.callLater(0, ProtocolWrapper.connectionLost, self, reason)


class _LaterLossFactory(WrappingFactory):
    protocol = _LaterLoss

    def __init__(self, wrapped: IProtocolFactory, clock: IReactorTime) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        self.clock = clock


@implementer(IStreamClientEndpoint)
class _PoolEndpoint:
    """An upstream's endpoint for pool connections: the connect timeout, `_LaterLoss`."""

    def __init__(self, endpoint: IStreamClientEndpoint, clock: IReactorTime) -> None:
        self._endpoint = endpoint
        self._clock = clock

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        wrapper = cast(
            _LaterLoss, await self._endpoint.connect(_LaterLossFactory(factory, self._clock))
        )
        # No Nagle delay between a request's head and its body, or behind a small reply.
        tune(wrapper.transport, size=64 * 1024)
        return wrapper.wrappedProtocol

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(factory))


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """Maps the synthetic host names of `UpstreamPool` back to endpoints."""

    def __init__(self, timeout: float, clock: IReactorTime) -> None:
        self._timeout = timeout
        self._clock = clock
        self._hosts: dict[str, bytes] = {}
        self._endpoints: dict[bytes, IStreamClientEndpoint] = {}

    def host_for(self, upstream: Upstream) -> bytes:
        host = self._hosts.get(upstream.name)
        if host is None:
            host = b"u%d%s" % (len(self._hosts), _HOST_SUFFIX)
            self._hosts[upstream.name] = host
        # The latest endpoint for a name wins (a consumer may build a fresh one per request).
        self._endpoints[host] = upstream.endpoint
        return host

    def endpoint_for(self, host: bytes) -> IStreamClientEndpoint:
        timed = TimeoutEndpoint(self._endpoints[host], self._timeout, self._clock)
        return _PoolEndpoint(timed, self._clock)

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return self.endpoint_for(uri.host)


class UpstreamPool:
    """HTTP requests to upstreams over kept-alive connections (PER_UPSTREAM each at most).

    One pool may serve several proxy resources (and a consumer's own calls to the same
    upstreams, through `request`); `close` drops the idle connections (call it when the
    service stops).

    :param connect_timeout: seconds a connection attempt may take before the request fails.
    :param idle_timeout: seconds an idle kept-alive connection is kept.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        per_upstream: int = 8,
        connect_timeout: float = 10.0,
        idle_timeout: int = 120,
    ) -> None:
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = per_upstream
        self._pool.cachedConnectionTimeout = idle_timeout
        self._endpoints = _Endpoints(connect_timeout, reactor)
        self._agent = Agent.usingEndpointFactory(reactor, self._endpoints, pool=self._pool)

    def connection_endpoint(self, upstream: Upstream) -> IStreamClientEndpoint:
        """UPSTREAM's endpoint with the connect timeout (for connections outside the pool)."""
        return TimeoutEndpoint(upstream.endpoint, self.connect_timeout, self.reactor)

    def request(
        self,
        upstream: Upstream,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        """METHOD TARGET (path and query, ``upstream.base_path`` prepended) to UPSTREAM.

        HEADERS must hold a ``Host``. The response's body is read with ``deliverBody``.
        """
        host = self._endpoints.host_for(upstream)
        uri = b"http://" + host + upstream.base_path + target
        answer: Deferred[IResponse] = self._agent.request(method, uri, headers, body)
        return answer

    def close(self) -> Deferred[None]:
        """Close the idle connections; fires once they are closed."""
        d: Deferred[None] = self._pool.closeCachedConnections()
        return d
