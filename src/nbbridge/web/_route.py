"""What a consumer of the proxy decides per request: an upstream and its rewrites, or a refusal.

The proxy asks a `Router` once per request (plain HTTP and WebSocket upgrades alike); the
router answers with a `Route` or a `Refusal`, at once or through an awaitable (a store
lookup, an instance starting). Everything specific to a consumer lives in its router: which
instance a cookie names (datalab), which backend a kernel id lives on (mixer), the Origin
check, which headers to strip and inject.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping

import attrs
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest


@attrs.frozen
class Upstream:
    """A server the proxy forwards to: an endpoint, and a name that keys its connection pool.

    :param name: identifies the server (``"instance-3f2a"``, ``"gpu/jupyter"``): connections
        made for one name are kept alive and reused for later requests with the same name, so
        two different servers must never share a name. It also names the server in logs and
        in the 502 page.
    :param endpoint: how to connect: a ``TCP4ClientEndpoint`` for a local server, an
        ``AgentLink.endpoint(service)`` for a service behind an agent.
    :param base_path: prepended to every path sent upstream (a Jupyter started with
        ``--ServerApp.base_url=/user/x/`` is ``base_path=b"/user/x"``); no trailing slash.
    """

    name: str
    endpoint: IStreamClientEndpoint
    base_path: bytes = b""


def _no_headers(headers: Headers) -> None:
    """The default rewrite: none."""


@attrs.frozen
class Route:
    """Where one request goes, and how its headers change on the way.

    The proxy always drops hop-by-hop headers and sets ``X-Forwarded-*`` first; then, on the
    request, ``drop_cookies``, ``drop_headers``, ``set_headers`` and finally
    ``request_headers``; on the response (the 101 of an upgrade included), after its own
    hop-by-hop filtering, ``response_headers``.

    :param path: the path and query to request upstream (after ``upstream.base_path``);
        None sends the client's own (``request.uri``).
    :param host: the ``Host`` header sent upstream; None keeps the client's, which is what
        Jupyter compares ``Origin`` against.
    :param drop_cookies: cookie names removed from the ``Cookie`` header (the front's own
        session cookie, which the upstream must never see).
    :param drop_headers: request headers removed (any client ``Authorization``).
    :param set_headers: request headers set, replacing any the client sent
        (``{"Authorization": "token T"}``).
    :param request_headers: a last rewrite of the headers sent upstream, in place.
    :param response_headers: a rewrite of the upstream's response headers before the client
        sees them, in place (remove the instance's own login cookies).
    """

    upstream: Upstream
    path: bytes | None = None
    host: bytes | None = None
    drop_cookies: Collection[str] = ()
    drop_headers: Collection[str] = ()
    set_headers: Mapping[str, str] = attrs.field(factory=dict)
    request_headers: Callable[[Headers], None] = _no_headers
    response_headers: Callable[[Headers], None] = _no_headers


@attrs.frozen
class Refusal:
    """No upstream for this request: answer CODE with a small HTML page saying MESSAGE.

    :param headers: extra response headers (``WWW-Authenticate``, ``Location`` for a 302).
    """

    code: int
    message: str
    headers: Mapping[str, str] = attrs.field(factory=dict)


Decision = Route | Refusal

#: What a consumer gives the proxy: the request in, a decision out, now or later. It is
#: called before any byte is sent upstream, with the request's headers and (for plain HTTP)
#: its whole body received; exceptions become a 500 page and a log line.
Router = Callable[[IRequest], Decision | Awaitable[Decision]]


def is_upgrade(request: IRequest) -> bool:
    """Whether REQUEST asks for a WebSocket (``Upgrade: websocket``, ``Connection: upgrade``)."""
    upgrade = request.getHeader(b"upgrade")
    connection = request.getHeader(b"connection")
    return (
        upgrade is not None
        and upgrade.strip().lower() == b"websocket"
        and connection is not None
        and b"upgrade" in [t.strip().lower() for t in connection.split(b",")]
    )


#: Methods that only read, by RFC 9110 (safe methods).
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})


def changes_state(request: IRequest) -> bool:
    """Whether REQUEST may change state upstream: an unsafe method, or a WebSocket upgrade.

    These are the requests a front that injects credentials must check ``Origin`` on.
    """
    return request.method not in SAFE_METHODS or is_upgrade(request)
