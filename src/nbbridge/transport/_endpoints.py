"""Endpoint-string shorthands and ``SERVICE=ENDPOINT`` mappings, shared by every daemon's options.

A user types ``--forward jupyter=8080`` or ``--expose ssh=22``; both mean "loopback only",
because a listener or target that is reachable from the network must be asked for explicitly.
"""

from __future__ import annotations

import re

_SERVICE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def endpoint_string(text: str) -> str:
    """Expand a bare port number to a loopback TCP endpoint string.

    ``"8080"`` becomes ``"tcp:8080:interface=127.0.0.1"``; anything else (``tcp:...``,
    ``ssl:...``, ``unix:...``) is returned unchanged for ``serverFromString``/``clientFromString``
    to parse, so their error messages stay the ones Twisted users know.
    """
    stripped = text.strip()
    if stripped.isascii() and stripped.isdigit():
        return f"tcp:{int(stripped)}:interface=127.0.0.1"
    return text


#: Accept queue for the listeners a burst reaches: the relay's port, the client's forwards.
DEEP_BACKLOG = 1024


def listen_endpoint_string(text: str, backlog: int = DEEP_BACKLOG) -> str:
    """``endpoint_string``, and a TCP or TLS listener gets a deep accept queue (BACKLOG)
    unless the string gives one.

    Twisted listens with a backlog of 50. A browser or a load test opens many connections at
    once, and a relay facing the internet takes floods of them; once its loop falls behind
    by 50 connections (a stall of 50 ms under 1000 connects a second), the kernel drops
    every further SYN, an honest agent's or client's as well, and each retries a second
    later (bench/load.py saw link set-ups of 1.1 s under a flood). The kernel caps the
    queue at ``net.core.somaxconn``.
    """
    endpoint = endpoint_string(text)
    if endpoint.split(":", 1)[0] in ("tcp", "tcp6", "ssl") and "backlog=" not in endpoint:
        endpoint += f":backlog={backlog}"
    return endpoint


def check_service_name(name: str) -> str:
    """Return ``name`` if it is a valid service name (1-64 of ``[A-Za-z0-9._-]``), else raise.

    Names travel in OPEN frames and appear in logs and URLs, so they are kept to a set that
    needs no quoting anywhere.
    """
    if not _SERVICE_NAME.fullmatch(name):
        raise ValueError(
            f"invalid service name {name!r}: use 1-64 characters from A-Z a-z 0-9 . _ -"
        )
    return name


def parse_mapping(text: str) -> tuple[str, str]:
    """Split ``"SERVICE=ENDPOINT"`` at the first ``=`` into ``(service, endpoint)``.

    Only the first ``=`` counts, because endpoint strings themselves contain ``=``
    (``tcp:8888:interface=127.0.0.1``). The endpoint is returned as typed; pass it through
    :func:`endpoint_string` to expand a bare port.
    """
    service, sep, endpoint = text.partition("=")
    if not sep:
        raise ValueError(f"expected SERVICE=ENDPOINT (e.g. jupyter=8888), got {text!r}")
    check_service_name(service)
    if not endpoint.strip():
        raise ValueError(f"missing endpoint after {service}= in {text!r}")
    return service, endpoint
