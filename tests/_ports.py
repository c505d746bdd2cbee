"""Loopback ports for servers that cannot report the port they bound (nginx, HAProxy, redis,
jupyter-server), picked where no other socket will be handed one in the meantime.

A port picked by binding port 0 lies in the kernel's ephemeral range, which is also where
every other port-0 listener and every outgoing connection's local port come from: between
the pick and the server's own bind, a relay started meanwhile, or a connection to redis, may
take it (CI saw HAProxy fail with "Address already in use" on such a port). A port below or
above that range is given out by the kernel to no one; it is checked free by binding it
first. Only on a host whose range leaves no such port is the kernel's pick taken (the
callers that can retry with another port on "Address already in use").
"""

from __future__ import annotations

import random
import socket

#: Used when /proc does not say (Linux's default ephemeral range).
_DEFAULT_EPHEMERAL = (32768, 60999)
#: Lowest port tried: above the well-known and most registered service ports.
_LOWEST = 10000


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(field) for field in f.read().split())
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL
    return low, high


def free_port(ephemeral: tuple[int, int] | None = None) -> int:
    """A loopback port nothing is bound to now and, where the host's EPHEMERAL range (read
    from /proc) leaves one, the kernel will not hand out by itself."""
    low, high = ephemeral or _ephemeral_range()
    below, above = range(_LOWEST, low), range(max(high + 1, _LOWEST), 65536)
    if below or above:
        for _attempt in range(100):
            i = random.randrange(len(below) + len(above))
            port = below[i] if i < len(below) else above[i - len(below)]
            if is_free(port):
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_free(port: int) -> bool:
    """Whether PORT on 127.0.0.1 can be bound now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
