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
    """``endpoint_string``, and a TCP, TLS or UNIX listener gets a deep accept queue
    (BACKLOG) unless the string gives one.

    Twisted listens with a backlog of 50. A browser or a load test opens many connections at
    once, and a relay facing the internet takes floods of them; once its loop falls behind
    by 50 connections (a stall of 50 ms under 1000 connects a second), the kernel drops
    every further SYN, an honest agent's or client's as well, and each retries a second
    later (bench/load.py saw link set-ups of 1.1 s under a flood). A UNIX socket's full
    queue refuses at once (EAGAIN to a non-blocking connect: nginx in front of the relay
    answers 502). The kernel caps the queue at ``net.core.somaxconn``.
    """
    endpoint = endpoint_string(text)
    kind, args, kwargs = split_description(endpoint)
    position = _BACKLOG_POSITION.get(kind)
    if position is None or "backlog" in kwargs or len(args) > position:
        return endpoint  # not a TCP, TLS or UNIX listener, or its backlog is given
    if (len(endpoint) - len(endpoint.rstrip("\\"))) % 2:
        # An unpaired backslash would escape the ':' added: Twisted refuses it as typed.
        return endpoint
    return f"{endpoint}:backlog={backlog}"


#: Where each listener kind takes ``backlog`` among its positional fields (Twisted's parsers:
#: tcp's port, interface, backlog; tcp6's port, backlog, interface; ssl's sixth; unix's
#: address, mode, backlog). A systemd socket's is its unit's ``Backlog=``.
_BACKLOG_POSITION = {"tcp": 2, "tcp6": 1, "ssl": 5, "unix": 2}


def split_description(description: str) -> tuple[str, list[str], dict[str, str]]:
    """Split an endpoint string into its kind (lower case), positional and keyword fields.

    Twisted's own parser is private, so this is a small tokenizer that follows its rules:
    fields split at unescaped ``:``, a backslash escapes the next character, ``key=value``
    fields are keyword arguments.
    """
    fields: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for c in chars:
        if c == "\\":
            current.append(next(chars, ""))
        elif c == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(c)
    fields.append("".join(current))
    kind, rest = fields[0].lower(), fields[1:]
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for field in rest:
        key, eq, value = field.partition("=")
        if eq:
            kwargs[key] = value
        else:
            args.append(field)
    return kind, args, kwargs


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
