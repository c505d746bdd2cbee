"""Header rewriting, sans-IO: hop-by-hop removal, ``X-Forwarded-*``, cookies, the route's edits.

Pure functions over `twisted.web.http_headers.Headers`, so that the HTTP path and the
WebSocket path rewrite headers the same way, and unit tests need no sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import attrs
from twisted.web.http_headers import Headers

from ._route import Route

#: Hop-by-hop headers (RFC 9110 §7.6.1, plus the obsolete ``Keep-Alive`` and ``Proxy-*``):
#: they describe one connection, never the next. Lower case.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

#: Headers the proxy computes itself on the request (the body length is re-sent by the client
#: side of the proxy, ``X-Forwarded-*`` are rebuilt).
_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")


def connection_tokens(headers: Headers) -> set[bytes]:
    """The header names listed in ``Connection`` (lower case): hop-by-hop too."""
    tokens: set[bytes] = set()
    for value in headers.getRawHeaders(b"connection", []):
        tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def end_to_end(headers: Headers, *, keep_length: bool = True) -> Headers:
    """A copy of HEADERS without hop-by-hop headers (those named in ``Connection`` included).

    :param keep_length: keep ``Content-Length`` (a response's is the client's too; a request's
        is recomputed from its body, so the request side drops it).
    """
    drop = connection_tokens(headers)
    out = Headers()
    for name, values in headers.getAllRawHeaders():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower.startswith(b"proxy-") or lower in drop:
            continue
        if not keep_length and lower == b"content-length":
            continue
        out.setRawHeaders(name, list(values))
    return out


@attrs.frozen
class ClientFacts:
    """What the proxy knows of the client's connection, for ``X-Forwarded-*``."""

    address: str
    secure: bool
    host: bytes | None


def set_forwarded(headers: Headers, client: ClientFacts, *, trust_incoming: bool) -> None:
    """Set ``X-Forwarded-For/-Proto/-Host`` for one more hop.

    :param trust_incoming: the client is a proxy we trust (nginx in front): append our peer
        to its ``X-Forwarded-For`` and keep its ``-Proto``/``-Host``. Otherwise whatever the
        client claimed is dropped, so that nobody can spoof an address upstream.
    """
    previous_for = headers.getRawHeaders(b"x-forwarded-for", []) if trust_incoming else []
    proto = headers.getRawHeaders(b"x-forwarded-proto") if trust_incoming else None
    host = headers.getRawHeaders(b"x-forwarded-host") if trust_incoming else None
    for name in _FORWARDED:
        headers.removeHeader(name)
    chain = [v.strip() for v in b", ".join(previous_for).split(b",") if v.strip()]
    chain.append(client.address.encode("ascii", "replace"))
    headers.setRawHeaders(b"X-Forwarded-For", [b", ".join(chain)])
    headers.setRawHeaders(
        b"X-Forwarded-Proto", proto[:1] if proto else [b"https" if client.secure else b"http"]
    )
    if host:
        headers.setRawHeaders(b"X-Forwarded-Host", host[:1])
    elif client.host is not None:
        headers.setRawHeaders(b"X-Forwarded-Host", [client.host])


def drop_cookies(headers: Headers, names: Collection[str]) -> None:
    """Remove the cookies called NAMES from the ``Cookie`` header (the header goes if empty)."""
    if not names:
        return
    unwanted = {n.encode("utf-8") for n in names}
    kept: list[bytes] = []
    for value in headers.getRawHeaders(b"cookie", []):
        for pair in value.split(b";"):
            pair = pair.strip()
            if pair and pair.split(b"=", 1)[0].strip() not in unwanted:
                kept.append(pair)
    headers.removeHeader(b"cookie")
    if kept:
        headers.setRawHeaders(b"Cookie", [b"; ".join(kept)])


def drop_set_cookies(headers: Headers, unwanted: Callable[[str], bool]) -> None:
    """Remove the ``Set-Cookie`` headers whose cookie name UNWANTED accepts.

    For a front that must not let an upstream's own login cookies reach the browser (Jupyter
    sets ``username-<host>-<port>`` and ``_xsrf``): ``Route(response_headers=lambda h:
    drop_set_cookies(h, lambda name: name.startswith("username-") or name == "_xsrf"))``.
    """
    cookies = headers.getRawHeaders(b"set-cookie")
    if not cookies:
        return
    kept = [
        c
        for c in cookies
        if not unwanted(c.split(b";", 1)[0].split(b"=", 1)[0].strip().decode("latin-1"))
    ]
    if kept:
        headers.setRawHeaders(b"Set-Cookie", kept)
    else:
        headers.removeHeader(b"set-cookie")


def upstream_request_headers(
    received: Headers, route: Route, client: ClientFacts, *, trust_forwarded: bool
) -> Headers:
    """The headers to send upstream for a request that arrived with RECEIVED, along ROUTE."""
    headers = end_to_end(received, keep_length=False)
    # twisted.web answered any "100-continue" itself and holds the whole body.
    headers.removeHeader(b"expect")
    set_forwarded(headers, client, trust_incoming=trust_forwarded)
    if route.host is not None:
        headers.setRawHeaders(b"Host", [route.host])
    elif not headers.hasHeader(b"host"):
        # An HTTP/1.0 client without Host: never let the pool's synthetic name through.
        headers.setRawHeaders(b"Host", [b"localhost"])
    drop_cookies(headers, route.drop_cookies)
    for name in route.drop_headers:
        headers.removeHeader(name.encode("latin-1"))
    for name, value in route.set_headers.items():
        headers.setRawHeaders(name.encode("latin-1"), [value.encode("latin-1")])
    route.request_headers(headers)
    return headers


def client_response_headers(received: Headers, route: Route) -> Headers:
    """The upstream's response headers as the client gets them."""
    headers = end_to_end(received)
    route.response_headers(headers)
    return headers


def websocket_request_headers(
    received: Headers, route: Route, client: ClientFacts, *, trust_forwarded: bool
) -> Headers:
    """As `upstream_request_headers`, for an upgrade: ``Upgrade``/``Connection`` put back."""
    headers = upstream_request_headers(received, route, client, trust_forwarded=trust_forwarded)
    headers.setRawHeaders(b"Upgrade", [b"websocket"])
    headers.setRawHeaders(b"Connection", [b"Upgrade"])
    return headers


def switching_headers(received: Headers, route: Route) -> Headers:
    """An upstream 101's headers as the client gets them: ``Upgrade``/``Connection`` kept."""
    headers = client_response_headers(received, route)
    headers.setRawHeaders(b"Upgrade", received.getRawHeaders(b"upgrade", [b"websocket"])[:1])
    headers.setRawHeaders(b"Connection", [b"Upgrade"])
    return headers
