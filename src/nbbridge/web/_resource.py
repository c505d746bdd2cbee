"""`ProxyResource`: a twisted.web resource that forwards every request under it to a route.

Each request: ask the router (at once or asynchronously), then either answer its refusal, or
forward the request (`_http`) or its WebSocket upgrade (`_upgrade`) to the route's upstream.
Failures to reach the upstream become a 502 page and one log line, never a hang: connecting
is bounded by the pool's connect timeout and waiting for the answer's head by
``head_timeout``. Children put on the resource (``putChild``) are served by themselves;
every other path is proxied.
"""

from __future__ import annotations

import inspect
from typing import Any, cast
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from nbbridge._internals import take_over_connection, write_now
from nbbridge._tuning import tune
from nbbridge.websocket import TrackedConnection

from ._client import ClientWatch, Discard, abort, is_upstream_failure, reason
from ._head import encode_request, encode_response_head
from ._headers import (
    ClientFacts,
    client_response_headers,
    switching_headers,
    upstream_request_headers,
    websocket_request_headers,
)
from ._http import BodyRelay, request_body
from ._pages import error_page, phrase
from ._pool import UpstreamPool
from ._route import Decision, Refusal, Route, Router, is_upgrade
from ._splice import SpliceEnd, splice
from ._stats import ProxyStats
from ._upgrade import UpgradeClient

#: Statuses whose responses have no body (RFC 9110).
_NO_BODY = frozenset({204, 304})


def _target(request: IRequest, route: Route) -> bytes:
    """The path and query to request upstream, in origin form."""
    target = route.path if route.path is not None else request.uri
    if not target.startswith(b"/"):
        # An absolute-form request line (`GET http://host/x HTTP/1.1`): keep path and query.
        parts = urlsplit(target)
        target = (parts.path or b"/") + (b"?" + parts.query if parts.query else b"")
    return target


def _client_facts(request: Request) -> ClientFacts:
    address = request.getClientAddress()
    return ClientFacts(
        address=getattr(address, "host", None) or "unknown",
        secure=request.isSecure(),
        host=request.getHeader(b"host"),
    )


class ProxyResource(Resource):
    """Forwards every request (HTTP and WebSocket) under it to what ROUTER decides.

    :param router: see `nbbridge.web.Router`.
    :param pool: the kept-alive upstream connections (one pool may be shared; the owner
        closes it when the service stops).
    :param trust_forwarded: the client is a trusted proxy (nginx in front): extend its
        ``X-Forwarded-*`` instead of replacing them.
    :param head_timeout: seconds to wait for the upstream's response head (its status line
        and headers), after the request was sent.
    """

    _log = Logger()

    def __init__(
        self,
        router: Router,
        pool: UpstreamPool,
        *,
        trust_forwarded: bool = False,
        head_timeout: float = 300.0,
        stats: ProxyStats | None = None,
    ) -> None:
        Resource.__init__(self)  # (untyped in Twisted)
        self.router = router
        self.pool = pool
        self.trust_forwarded = trust_forwarded
        self.head_timeout = head_timeout
        self.stats = stats if stats is not None else ProxyStats()

    def getChild(self, path: bytes, request: IRequest) -> Resource:
        return self

    def render(self, request: IRequest) -> Any:
        req = cast(Request, request)
        self.stats.requests += 1
        # No Nagle delay for the pieces of a streamed answer (a chunk, its trailer).
        tune(req.transport, size=64 * 1024)
        d = Deferred.fromCoroutine(self._serve(req))
        d.addErrback(self._crashed, req)
        return NOT_DONE_YET

    # -- the steps ---------------------------------------------------------------------------

    async def _decide(self, request: Request) -> Decision:
        decision = self.router(request)
        if inspect.isawaitable(decision):
            return await decision
        return decision

    async def _serve(self, request: Request) -> None:
        gone = ClientWatch(request)
        decision = await self._decide(request)
        if gone.left:
            return
        if isinstance(decision, Refusal):
            self.stats.refused += 1
            self._page(request, decision.code, decision.message, decision.headers)
            return
        transport = request.channel.transport if request.channel is not None else None
        if isinstance(transport, TrackedConnection):
            # The router accepted this client: under a ConnectionTracker with limits, its
            # connection stops counting as an unfinished handshake, as a WebSocket's does, so
            # that a long download or a slow upstream is not cut at the handshake deadline.
            transport.upgraded()
        if is_upgrade(request):
            await self._upgrade(request, decision, gone)
        else:
            await self._forward(request, decision, gone)

    async def _forward(self, request: Request, route: Route, gone: ClientWatch) -> None:
        """A plain request: headers and body up, the response streamed down."""
        headers = upstream_request_headers(
            request.requestHeaders,
            route,
            _client_facts(request),
            trust_forwarded=self.trust_forwarded,
        )
        body = request_body(request.content, self.stats)
        answer = self.pool.request(
            route.upstream, request.method, _target(request, route), headers, body
        )
        answer.addTimeout(self.head_timeout, self.pool.reactor)
        gone.on_leave(answer.cancel)
        try:
            response: IResponse = await answer
        except CancelledError:
            return  # the client left
        except Exception:
            failure = Failure()
            if not is_upstream_failure(failure):
                raise
            self._bad_gateway(request, route, failure)
            return
        if gone.left:
            response.deliverBody(Discard())
            return
        request.setResponseCode(response.code, response.phrase)
        out = client_response_headers(response.headers, route)
        request.responseHeaders = out
        relay = BodyRelay(request, self.stats)
        gone.on_leave(relay.abandon)
        response.deliverBody(relay)
        try:
            await relay.done
        except Exception:
            failure = Failure()
            if gone.left:
                return
            self.stats.cut += 1
            self._log.warn(
                "{method} {uri}: the upstream {upstream} cut the response body ({why});"
                " the client's connection is aborted",
                method=request.method.decode("latin-1"),
                uri=request.uri.decode("latin-1"),
                upstream=route.upstream.name,
                why=reason(failure),
            )
            request.unregisterProducer()
            abort(request.channel.transport)
            return
        request.unregisterProducer()
        if not gone.left:
            request.finish()

    async def _upgrade(self, request: Request, route: Route, gone: ClientWatch) -> None:
        """A WebSocket: the upgrade upstream, then the upstream's answer to the browser."""
        self.stats.upgrades += 1
        headers = websocket_request_headers(
            request.requestHeaders,
            route,
            _client_facts(request),
            trust_forwarded=self.trust_forwarded,
        )
        head = encode_request(
            request.method, route.upstream.base_path + _target(request, route), headers
        )
        endpoint = self.pool.connection_endpoint(route.upstream)
        connecting = endpoint.connect(Factory.forProtocol(lambda: UpgradeClient(head, self.stats)))
        gone.on_leave(connecting.cancel)
        try:
            upstream = cast(UpgradeClient, await connecting)
        except CancelledError:
            return
        except Exception:
            failure = Failure()
            if not is_upstream_failure(failure):
                raise
            self._bad_gateway(request, route, failure)
            return
        answer = upstream.answer
        answer.addTimeout(self.head_timeout, self.pool.reactor)
        gone.on_leave(answer.cancel)
        try:
            response, leftover = await answer
        except CancelledError:
            if upstream.transport is not None:
                abort(upstream.transport)
            return
        except Exception:
            failure = Failure()
            if upstream.transport is not None:
                abort(upstream.transport)
            if not is_upstream_failure(failure):
                raise
            self._bad_gateway(request, route, failure)
            return
        if response.code != 101:
            await self._refused_upgrade(request, route, upstream, response, leftover, gone)
            return
        if gone.left or request.channel is None:
            abort(upstream.transport)
            return
        # The upstream accepted: now, and only now, the browser's handshake completes.
        browser = SpliceEnd(self.stats)
        take_over_connection(request, browser)
        out = switching_headers(response.headers, route)
        write_now(
            browser.out, encode_response_head(101, response.phrase or b"Switching Protocols", out)
        )
        splice(browser, upstream)
        if leftover:
            upstream.dataReceived(leftover)

    async def _refused_upgrade(
        self,
        request: Request,
        route: Route,
        upstream: UpgradeClient,
        response: Any,
        leftover: bytes,
        gone: ClientWatch,
    ) -> None:
        """The upstream said no to the upgrade: the browser gets its status, headers and body."""
        try:
            body = await upstream.read_body(response, leftover, response.code in _NO_BODY)
        except Exception:
            failure = Failure()
            self._bad_gateway(request, route, failure)
            return
        finally:
            if upstream.transport is not None:
                upstream.transport.loseConnection()
        if gone.left:
            return
        self._log.info(
            "{uri}: the upstream {upstream} refused the WebSocket upgrade with {code}",
            uri=request.uri.decode("latin-1"),
            upstream=route.upstream.name,
            code=response.code,
        )
        request.setResponseCode(response.code, response.phrase)
        out = client_response_headers(response.headers, route)
        out.removeHeader(b"content-length")
        out.setRawHeaders(b"Content-Length", [b"%d" % len(body.body)])
        request.responseHeaders = out
        request.write(body.body)
        request.finish()

    # -- answers of our own ------------------------------------------------------------------

    def _page(self, request: Request, code: int, message: str, headers: Any = None) -> None:
        page = error_page(code, message)
        request.setResponseCode(code, phrase(code).encode("latin-1"))
        request.responseHeaders = Headers()
        for name, value in (headers or {}).items():
            request.responseHeaders.setRawHeaders(name, [value])
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % len(page))
        request.setHeader(b"cache-control", b"no-store")
        if request.method != b"HEAD":
            request.write(page)
        request.finish()

    def _bad_gateway(self, request: Request, route: Route, failure: Failure) -> None:
        self.stats.bad_gateway += 1
        why = reason(failure)
        self._log.warn(
            "{method} {uri}: 502, the upstream {upstream} failed: {why}",
            method=request.method.decode("latin-1"),
            uri=request.uri.decode("latin-1"),
            upstream=route.upstream.name,
            why=why,
        )
        if request.finished or request.channel is None:
            return
        self._page(
            request,
            502,
            f"The server behind this proxy ({route.upstream.name}) could not be reached: "
            + why.rstrip(".")
            + ".",
        )

    def _crashed(self, failure: Failure, request: Request) -> None:
        self._log.failure("{uri}: the proxy failed", failure, uri=request.uri.decode("latin-1"))
        if request.startedWriting or request.finished or request.channel is None:
            if request.channel is not None and request.channel.transport is not None:
                abort(request.channel.transport)
            return
        self._page(request, 500, "The proxy failed on this request; the error is logged.")
