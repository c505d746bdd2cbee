"""Which browser pages may open a WebSocket to the gateway (sans-IO).

A desktop served over VNC is a prize for cross-site WebSocket hijacking: any page a user
visits could open ``ws://127.0.0.1:PORT`` and drive the desktop. Browsers always send
``Origin`` on a WebSocket handshake, so the gateway accepts only the origins it was told
(``--allowed_origins``) and, by default, its own pages: the HTTP port it serves
(``--http_port``) or the WebSocket port itself, on the host the browser asked for. A request
without ``Origin`` does not come from a browser page (websocat, a VNC proxy) and is accepted.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs


def normalise_origin(origin: str) -> str | None:
    """ORIGIN as ``scheme://host:port`` with the default port filled in, or None if malformed."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    if port is None:
        port = 443 if scheme == "https" else 80
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _host_name(host_header: str) -> str:
    """The host part of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@attrs.frozen
class OriginPolicy:
    """The origins allowed to open a WebSocket.

    :param allowed: normalised origins given by ``--allowed_origins``.
    :param any_origin: ``--allowed_origins '*'``: every origin (for pages served elsewhere).
    :param own_ports: the ports of the gateway's own pages (HTTP port, WebSocket port).
    :param tls: whether those pages are served over https.
    """

    allowed: frozenset[str] = frozenset()
    any_origin: bool = False
    own_ports: tuple[int, ...] = ()
    tls: bool = False

    @classmethod
    def parse(cls, text: str | None, own_ports: tuple[int, ...], tls: bool) -> OriginPolicy:
        """From ``--allowed_origins`` (comma-separated origins, or ``*``); ValueError if bad."""
        allowed: set[str] = set()
        any_origin = False
        for item in (text or "").split(","):
            item = item.strip()
            if not item:
                continue
            if item == "*":
                any_origin = True
                continue
            origin = normalise_origin(item)
            if origin is None:
                raise ValueError(f"not an origin (scheme://host[:port]): {item!r}")
            allowed.add(origin)
        return cls(frozenset(allowed), any_origin, own_ports, tls)

    def allows(self, origin: str | None, host_header: str | None) -> bool:
        """Whether a handshake with ORIGIN (None: no header) for HOST_HEADER may open."""
        if origin is None:
            return True
        if self.any_origin:
            return True
        normal = normalise_origin(origin)
        if normal is None:
            return False
        if normal in self.allowed:
            return True
        if not host_header:
            return False
        scheme = "https" if self.tls else "http"
        host = _host_name(host_header)
        return any(normal == f"{scheme}://{host}:{port}" for port in self.own_ports)
