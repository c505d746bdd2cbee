# twisted.web's resource API is untyped.
# mypy: disable-error-code="no-untyped-call"
"""Who sees the stats, and how the stats token travels without landing in a log.

The stats token is taken from `Authorization: Bearer` (Prometheus, curl, websocat) or from the
`nbbridge_stats` cookie, never from the URL: URLs are written to access logs, browser history
and proxies' logs. A browser gets the cookie from the page's sign-in form (`POST /stats/login`):
HttpOnly (scripts never see it), SameSite=Strict (no other site's page can use it), limited to
`/stats`, Secure when the request came over TLS, gone when the browser closes.
`POST /stats/logout` clears it. (The relay's access log redacts any `token=` in a URL.)
"""

from __future__ import annotations

import re
from http.cookies import CookieError, SimpleCookie

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from ._config import HubConfig

#: The cookie holding the stats token, sent by the browser to /stats/... only.
STATS_COOKIE = "nbbridge_stats"
_COOKIE_PATH = b"/stats"
#: What a cookie value may hold unquoted (tokens from `nbbridge token` are URL-safe base64).
_COOKIE_SAFE = re.compile(r"[A-Za-z0-9._~+/=-]{1,512}\Z")


def stats_token(bearer: str | None, cookie_header: str | None) -> str | None:
    """The stats token: the bearer token if there is one, else the `nbbridge_stats` cookie."""
    if bearer:
        return bearer
    if not cookie_header:
        return None
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(cookie_header)
    except CookieError:
        return None
    morsel = cookies.get(STATS_COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


def _remote(request: Request) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


def _cookie(request: Request, value: str, *, clear: bool = False) -> bytes:
    parts = [f"{STATS_COOKIE}={value}".encode("ascii"), b"Path=" + _COOKIE_PATH, b"HttpOnly"]
    parts.append(b"SameSite=Strict")
    # Behind a TLS proxy the request itself is plain HTTP; the proxy says what the browser used.
    forwarded = (request.getHeader(b"x-forwarded-proto") or b"").lower()
    if request.isSecure() or forwarded == b"https":
        parts.append(b"Secure")
    if clear:
        parts.append(b"Max-Age=0")
    return b"; ".join(parts)


class StatsLogin(Resource):
    """`POST /stats/login` (form field `token`): the stats token as a cookie, then the page."""

    isLeaf = True
    _log = Logger()

    def __init__(self, config: HubConfig) -> None:
        super().__init__()
        self._config = config

    def render_POST(self, request: Request) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        args: dict[bytes, list[bytes]] = request.args or {}
        values = args.get(b"token") or [b""]
        token = bytes(values[0]).decode("utf-8", "replace").strip()
        if not self._config.stats_allowed(token) or _COOKIE_SAFE.match(token) is None:
            # Never log what was typed: it may be a real token with a typo.
            self._log.info("stats sign-in from {remote} refused", remote=_remote(request))
            return _see_other(request, b"../stats#sign-in-refused")
        self._log.info("stats sign-in from {remote}", remote=_remote(request))
        request.setHeader(b"set-cookie", _cookie(request, token))
        return _see_other(request, b"../stats")


class StatsLogout(Resource):
    """`POST /stats/logout`: forget the cookie."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"set-cookie", _cookie(request, "", clear=True))
        return _see_other(request, b"../stats")


def _see_other(request: Request, location: bytes) -> bytes:
    request.setResponseCode(303)
    request.setHeader(b"location", location)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b""
