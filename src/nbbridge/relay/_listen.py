"""Reading listen endpoint strings just enough to tell loopback from public, and ws from wss.

Twisted's own parser is private, so this is a small tokenizer that follows its rules:
fields split at unescaped `:`, a backslash escapes the next character, `key=value` fields are
keyword arguments.
"""

from __future__ import annotations

from nbbridge.transport import is_loopback_host

DEFAULT_LISTEN = "tcp:8765:interface=127.0.0.1"

_TLS_KINDS = {"ssl", "tls"}
# Position of `interface` among the positional arguments, where Twisted allows it there.
_INTERFACE_POSITION = {"tcp": 1, "tcp6": 2}


def split_description(description: str) -> tuple[str, list[str], dict[str, str]]:
    """Split an endpoint string into its kind, positional and keyword fields."""
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
