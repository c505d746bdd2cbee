"""Reading listen endpoint strings just enough to tell loopback from public, and ws from wss
(split as Twisted splits them: ``nbbridge.transport.split_description``).
"""

from __future__ import annotations

from nbbridge.transport import is_loopback_host, split_description

DEFAULT_LISTEN = "tcp:8765:interface=127.0.0.1"

_TLS_KINDS = {"ssl", "tls"}
# Position of `interface` among the positional arguments, where Twisted allows it there.
_INTERFACE_POSITION = {"tcp": 1, "tcp6": 2}


def uses_tls(description: str) -> bool:
    """Whether the endpoint serves TLS (so its URLs are wss://)."""
    return split_description(description)[0] in _TLS_KINDS


def loopback_problem(description: str) -> str | None:
    """Why DESCRIPTION may serve beyond this machine, or None when it is loopback-only."""
    kind, args, kwargs = split_description(description)
    if kind == "unix":
        return None
    if kind not in ("tcp", "tcp6", "ssl"):
        return f"cannot tell whether a {kind!r} endpoint is loopback-only"
    interface = kwargs.get("interface")
    position = _INTERFACE_POSITION.get(kind)
    if interface is None and position is not None and len(args) > position:
        interface = args[position]
    if not interface:
        return "it listens on every interface (no interface=127.0.0.1)"
    if not is_loopback_host(interface):
        return f"interface {interface} is not a loopback address"
    return None
