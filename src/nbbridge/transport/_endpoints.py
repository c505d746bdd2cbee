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
