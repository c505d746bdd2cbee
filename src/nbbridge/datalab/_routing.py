"""The proxy's rules for ``ANY /*``, without I/O: cookies, Origin, headers both ways.

The browser holds only datalab's session cookie; the instance's token is added upstream.
Because Jupyter skips its XSRF and Origin checks for a token-authenticated request, the proxy
makes them itself: a state-changing request or a WebSocket upgrade from another origin is
refused. The instance's own login cookies are removed from its responses, so nothing a
browser keeps could reach an instance without datalab.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

#: The browser's cookie naming its datalab session.
SESSION_COOKIE = "datalab-session"
#: Methods that change nothing: allowed whatever the Origin.
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
#: Instance cookies the browser may keep: Jupyter's XSRF cookie (JupyterLab reads it).
KEPT_INSTANCE_COOKIES = frozenset({"_xsrf"})


def read_cookie(headers: Sequence[bytes] | None, name: str) -> str | None:
    """The value of cookie NAME in Cookie headers (the last one if repeated), or None."""
    found = None
    for header in headers or []:
        for part in header.decode("latin-1").split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                found = value.strip()
    return found


def strip_cookie(headers: Sequence[bytes] | None, name: str) -> list[bytes]:
    """Cookie headers without cookie NAME (empty list if nothing is left)."""
    kept: list[str] = []
    for header in headers or []:
        for part in header.decode("latin-1").split(";"):
            part = part.strip()
            if part and part.partition("=")[0].strip() != name:
                kept.append(part)
    return ["; ".join(kept).encode("latin-1")] if kept else []


def origin_allowed(
    method: bytes, origin: bytes | None, host: bytes | None, *, websocket: bool
) -> bool:
    """Whether a request may go on: same-origin, or one that changes nothing.

    A WebSocket upgrade must carry an Origin (every browser sends one) naming this host; a
    state-changing request with an Origin must name this host (a browser sends Origin with
    every cross-site one; tools like curl send none, and hold no cookie a page could abuse).
    """
    if not websocket and method.upper() in SAFE_METHODS:
        return True
    if origin is None:
        return not websocket
    if host is None:
        return False
    try:
        origin_host = urlsplit(origin.decode("ascii").strip()).netloc.lower()
    except (UnicodeDecodeError, ValueError):
        return False
    if not origin_host or origin.strip() == b"null":
        return False
    return origin_host == host.decode("latin-1").strip().lower()
