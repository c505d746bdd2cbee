"""Relay URLs: parsed once at start-up, so every later connection uses checked values.

The one policy decision here is that ``ws://`` (no TLS) is only allowed to a loopback relay
unless the user explicitly passes ``--insecure``: tokens travel in the handshake, and a link's
metadata (who talks to whom, when, how much) should not cross a network in clear.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import attrs

_DEFAULT_PORTS = {"ws": 80, "wss": 443}


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1`` (also IPv4-mapped)."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


@attrs.frozen
class RelayURL:
    """A checked ``ws://`` or ``wss://`` relay address.

    :ivar path: the base path under which the relay's routes live, without a trailing slash
        (``""`` for a relay at the root, ``"/nbbridge"`` behind a proxy that mounts it there).
    """

    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def secure(self) -> bool:
        """True when the connection uses TLS (``wss://``)."""
        return self.scheme == "wss"

    @property
    def netloc(self) -> str:
        """``host[:port]`` as it goes in a URL: IPv6 in brackets, the default port left out."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return host
        return f"{host}:{self.port}"

    def url_for(self, route: str) -> str:
        """The full URL of a relay route, e.g. ``url_for("/v1/agents/gpu/link")``."""
        if not route.startswith("/"):
            raise ValueError(f"route must start with '/': {route!r}")
        return f"{self.scheme}://{self.netloc}{self.path}{route}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path or '/'}"


def parse_relay_url(url: str, insecure: bool = False) -> RelayURL:
    """Parse and check a relay URL given on the command line.

    :param insecure: allow ``ws://`` to a host that is not loopback (``--insecure``).
    :raises ValueError: with a message meant for the person who typed the URL.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise ValueError(f"invalid relay URL {url!r}: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(
            f"relay URL must start with wss:// (or ws:// for a local relay), got {url!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "relay URL must not contain credentials; give the token with --token-file "
            "or NBBRIDGE_TOKEN"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"relay URL must not have a query or fragment: {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"relay URL has no host: {url!r}")
    if port == 0:
        raise ValueError(f"invalid relay URL {url!r}: port 0")
    if scheme == "ws" and not insecure and not is_loopback_host(host):
        raise ValueError(f"refusing unencrypted ws:// to {host}; use wss:// or pass --insecure")
    return RelayURL(
        scheme=scheme,
        host=host,
        port=port if port is not None else _DEFAULT_PORTS[scheme],
        path=parts.path.rstrip("/"),
    )
