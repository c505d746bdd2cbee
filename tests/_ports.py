"""Loopback ports for servers that cannot report the port they bound (nginx, HAProxy, redis,
jupyter-server), picked where no other socket will be handed one in the meantime.

A port picked by binding port 0 lies in the kernel's ephemeral range, which is also where
every other port-0 listener and every outgoing connection's local port come from: between
the pick and the server's own bind, a relay started meanwhile, or a connection to redis, may
take it (CI saw HAProxy fail with "Address already in use" on such a port). A port below
that range is given out by the kernel to no one; it is checked free by binding it first.
"""

from __future__ import annotations

import random
import socket

#: Used when /proc does not say (Linux's default ephemeral range starts here).
_DEFAULT_EPHEMERAL_LOW = 32768
#: Lowest port tried: above the well-known and most registered service ports.
_LOWEST = 10000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_LOW


def free_port() -> int:
    """A loopback port nothing is bound to now and the kernel will not hand out by itself."""
    high = _ephemeral_low() - 1
    if high <= _LOWEST:
        raise RuntimeError(f"no ports below the ephemeral range ({high + 1}) to choose from")
    for _attempt in range(100):
        port = random.randint(_LOWEST, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port found between {_LOWEST} and {high}")
