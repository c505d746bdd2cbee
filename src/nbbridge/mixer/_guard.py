"""The mixer's token: every request shows it, or the cookie the mixer set when it was shown.

Jupyter's own rule, kept: ``Authorization: token T`` or ``?token=T``. A browser that opened
``/lab?token=T`` then loads scripts and styles that carry neither, so a request with the
right ``?token=`` is answered with a cookie (HttpOnly, SameSite=Strict) whose value is an
HMAC of the token, never the token; later requests may show that instead. A state-changing
request with an ``Origin`` must come from the mixer's own origin (the cookie must not let
another site act).
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qsl, urlsplit

from twisted.web.iweb import IRequest

from nbbridge.web import changes_state


def cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"nbbridge-mixer cookie", hashlib.sha256).hexdigest()


def _query_token(request: IRequest) -> str | None:
    _, _, query = request.uri.partition(b"?")
    for key, value in parse_qsl(query.decode("latin-1")):
        if key == "token":
            return value
    return None


def shown_token(request: IRequest, cookie: str) -> tuple[str | None, bool]:
    """(what REQUEST shows as the token, or a matching cookie marker; whether by query)."""
    header = request.getHeader(b"authorization")
    if header is not None:
        scheme, _, value = header.decode("latin-1").partition(" ")
        if scheme.lower() in ("token", "bearer") and value.strip():
            return value.strip(), False
    query = _query_token(request)
    if query is not None:
        return query, True
    raw = request.getCookie(cookie.encode())
    if raw is not None:
        return "cookie:" + raw.decode("latin-1"), False
    return None, False


def check(request: IRequest, token: str, cookie: str) -> tuple[bool, str | None]:
    """(allowed, why not). Sets the cookie on a request that showed ``?token=``."""
    shown, by_query = shown_token(request, cookie)
    if shown is None:
        return False, "a token is needed (Authorization: token T, or ?token=T)"
    if shown.startswith("cookie:"):
        ok = hmac.compare_digest(shown[7:].encode(), cookie_value(token).encode())
    else:
        ok = hmac.compare_digest(shown.encode(), token.encode())
    if not ok:
        return False, "wrong token"
    origin = request.getHeader(b"origin")
    host = request.getHeader(b"host")
    if origin is not None and changes_state(request):
        netloc = urlsplit(origin.decode("latin-1")).netloc
        if host is None or netloc != host.decode("latin-1"):
            return False, "cross-origin request refused"
    if by_query:
        request.addCookie(  # type: ignore[call-arg]
            cookie.encode(),
            cookie_value(token).encode(),
            path=b"/",
            httpOnly=True,
            sameSite="strict",
        )
    return True, None
