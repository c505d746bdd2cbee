# twisted.web's and Autobahn's resource APIs are untyped.
# mypy: disable-error-code="no-untyped-call"
"""The relay's resource tree: `GET /status`, the WebSocket routes under `/v1/`, and mounts.

A mount is whatever the relay daemon serves beside the tunnel on the same port (the hub:
`/hub/...`, `/stats`, `/metrics`). It puts its resources on the root and returns a
`SiteExtension` whose periodic jobs run while the Site is listening. The relay itself knows
nothing of what is mounted: the daemon's `tap` assembles them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.interfaces import IReactorTime
from twisted.web.http import combinedLogFormatter
from twisted.web.resource import NoResource, Resource
from twisted.web.server import Request, Site

from nbbridge.contract import RouteKind, parse_bearer, parse_route
from nbbridge.websocket import RateLimit, RefusalLog, RouteBinding, request_done, too_many

from ._auth import check_admin
from ._core import Relay
from ._protocol import RelayWebSocketFactory


class SiteExtension(Protocol):
    """What a mount leaves running: started and stopped with the Site's listener."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


#: Puts a mount's resources on the root (given the relay core and the reactor).
Mount = Callable[[Resource, Relay, IReactorTime], SiteExtension]

#: Neither /status nor a WebSocket handshake has a body worth keeping.
MAX_REQUEST_BODY = 64 * 1024
_TOKEN_IN_QUERY = re.compile(rb"([?&;]token=)[^&;#\s]*", re.IGNORECASE)


def redact(value: bytes) -> bytes:
    """VALUE (a URL) with the value of every `token=` query parameter replaced."""
    return _TOKEN_IN_QUERY.sub(rb"\1REDACTED", value)


class _Redacted:
    """A request as the access log sees it: URL and Referer without token values."""

    def __init__(self, request: Any) -> None:
        self._request = request
        self.uri = redact(request.uri)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    def getHeader(self, name: bytes) -> bytes | None:
        value: bytes | None = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            return redact(value)
        return value


def access_log_line(timestamp: str, request: Any) -> str:
    """The Site's combined-format access log line, without token values.

    Browsers cannot put a token in a WebSocket handshake's headers, so mounts (the hub) take
    it from `?token=`: the access log must not keep it.
    """
    line: str = combinedLogFormatter(timestamp, _Redacted(request))
    return line


class BoundedRequest(Request):
    """A request whose body may not exceed MAX_REQUEST_BODY: a bigger one gets 413 and a close.

    twisted.web would otherwise spool any body to a temporary file before rendering.
    """

    _body_size = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_REQUEST_BODY:
            super().gotLength(0)
            self._refuse()
        else:
            super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_size += len(data)
        if self._body_size > MAX_REQUEST_BODY:
            self._refuse()
        else:
            super().handleContentChunk(data)

    def process(self) -> None:
        if self._refused:
            return
        if not self.uri.isascii():
            # A URI is ASCII (RFC 3986); twisted.web would fail rendering an error page for
            # one that is not, and log a traceback per request.
            self.setResponseCode(400)
            self.setHeader(b"content-type", b"text/plain; charset=utf-8")
            self.write(b"request URI must be ASCII (percent-encode other bytes)\n")
            self.finish()
            return
        super().process()

    def finish(self) -> None:
        channel = getattr(self, "channel", None)  # the channel forgets us once we finish
        transport = channel.transport if channel is not None else None
        super().finish()
        # A keep-alive connection gets a fresh deadline for its next request.
        request_done(transport)

    def _refuse(self) -> None:
        self._refused = True
        transport = self.channel.transport
        if transport is not None:
            transport.write(
                b"HTTP/1.1 413 Request Entity Too Large\r\n"
                b"Connection: close\r\nContent-Length: 0\r\n\r\n"
            )
            transport.loseConnection()


class WebSocketRoutes(Resource):
    """`/v1/agents/{name}/control|link|data/{link_id}`; anything else is 404."""

    isLeaf = True

    def __init__(self, factories: dict[RouteKind, RelayWebSocketFactory]) -> None:
        super().__init__()
        self._factories = factories

    def render(self, request: Request) -> Any:
        try:
            segments = [s.decode("utf-8") for s in request.postpath or []]
        except UnicodeDecodeError:
            segments = []
        route = parse_route(segments)
        if route is None:
            return NoResource("No such route.").render(request)
        binding: RouteBinding[Any] = RouteBinding(self._factories[route.kind], route)
        return WebSocketResource(binding).render(request)


class StatusResource(Resource):
    """`GET /status`: counters for everyone; with the admin token, also each agent.

    Requests beyond `status_per_second` (all clients together) get 429 naming the limit.
    """

    isLeaf = True

    def __init__(self, relay: Relay, admin_sha256: bytes | None) -> None:
        super().__init__()
        self._relay = relay
        self._admin_sha256 = admin_sha256
        self._rate = RateLimit(relay.limits.status_per_second, relay.clock)
        self._refusals = RefusalLog(relay.clock)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if not self._rate.allow():
            return too_many(
                request, "status_per_second", self._rate.rate, "/status", self._refusals
            )
        header = request.getHeader(b"authorization")
        admin = False
        if header is not None and self._admin_sha256 is not None:
            token = parse_bearer({"authorization": header.decode("latin-1")})
            admin = check_admin(self._admin_sha256, token)
            if not admin:
                request.setResponseCode(401)
                return _json({"error": "admin token not recognised"})
        return _json(self._relay.status(admin=admin))


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=1).encode("utf-8") + b"\n"


class RelaySite(Site):
    """The relay's Site; starts and stops its mounts' periodic jobs with the listener."""

    def __init__(
        self, resource: Resource, extensions: Mapping[str, SiteExtension], **kwargs: Any
    ) -> None:
        super().__init__(resource, **kwargs)
        self.extensions = dict(extensions)

    def startFactory(self) -> None:
        super().startFactory()
        for extension in self.extensions.values():
            extension.start()

    def stopFactory(self) -> None:
        for extension in self.extensions.values():
            extension.stop()
        super().stopFactory()


def build_site(
    relay: Relay,
    factories: dict[RouteKind, RelayWebSocketFactory],
    admin_sha256: bytes | None,
    reactor: IReactorTime,
    mounts: Mapping[str, Mount] | None = None,
) -> RelaySite:
    """The relay's Site: one port for the status page, every WebSocket route and the MOUNTS."""
    root = Resource()
    root.putChild(b"status", StatusResource(relay, admin_sha256))
    root.putChild(b"v1", WebSocketRoutes(factories))
    extensions = {name: mount(root, relay, reactor) for name, mount in (mounts or {}).items()}
    site = RelaySite(
        root,
        extensions,
        requestFactory=BoundedRequest,
        reactor=reactor,
        logFormatter=access_log_line,
    )
    site.displayTracebacks = False
    return site
