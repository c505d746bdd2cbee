"""relay.toml: who may register which agent, who may reach which agent, and the limits.

```toml
[agents.gpu]
token_sha256 = "<64 hex digits>"

[clients.laptop]
token_sha256 = "<64 hex digits>"
agents = ["gpu"]            # or ["*"]

[limits]                    # all optional
links_per_agent = 64
links_per_client = 16
handshake_timeout = 15

[hub]                       # optional: the topic hub, /stats, /metrics (see nbbridge.hub)
prefix = "/hub"
```

Sections served by what the relay daemon mounts beside the tunnel (`[hub]`) are checked by
the parser their owner gives (`SectionParser`), so this module knows nothing of them.
Tokens are stored only as SHA-256 hashes (`nbbridge.relay.hash_token`). Every error names the
file and the key, in one line, so an operator can fix it without reading code.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from nbbridge.contract import DEFAULT_DIAL_TIMEOUT, valid_name
from nbbridge.websocket import ConnectionLimits

ALL_AGENTS = "*"


class ConfigError(ValueError):
    """relay.toml is unreadable or wrong; the message names the file and the key."""


#: Builds the error for KEY and PROBLEM (the message names the file and the key).
Fail = Callable[[str, str], ConfigError]
#: Checks one extra section's table, raising what ``fail`` builds; returns its parsed form.
SectionParser = Callable[[Fail, Mapping[str, Any]], Any]


@attrs.frozen
class Limits:
    """Bounds that keep one agent or client from taking the whole relay."""

    max_agents: int = 1000
    links_per_agent: int = 64
    #: links (waiting or spliced) one client may hold to one agent, so that a single client
    #: cannot take all of an agent's links_per_agent (not applied without a relay.toml, where
    #: every client is the same "anyone")
    links_per_client: int = 16
    pending_dials_per_agent: int = 16
    max_message_size: int = 2 * 1024 * 1024
    #: bytes a client may send before its agent answered the dial (reading is paused meanwhile)
    pending_buffer: int = 256 * 1024
    dial_timeout: float = DEFAULT_DIAL_TIMEOUT
    #: a dead peer is noticed within ping_interval + ping_timeout seconds
    ping_interval: float = 25.0
    ping_timeout: float = 30.0
    #: seconds a connection may take to finish its WebSocket handshake (or its next HTTP
    #: request); the deadline does not restart when bytes arrive
    handshake_timeout: float = 15.0
    #: connections that have not finished their handshake, from one address and in all
    handshakes_per_ip: int = 32
    handshakes_total: int = 1024
    #: open connections from one address
    connections_per_ip: int = 256
    #: seconds a connection refused at accept waits, unread, for its 429/503 (0: at once):
    #: a flood that reconnects whatever is refused is refused that much less often
    refusal_delay: float = 3.0
    #: addresses the per-address limits skip: a reverse proxy on this machine
    per_ip_exempt: tuple[str, ...] = ("127.0.0.1", "::1")
    #: GET /status requests per second, all clients together (a burst of as many is allowed)
    status_per_second: float = 20.0
    #: pairing (`nbbridge pair`): seconds a code stays valid unused, seconds the two sides
    #: then have to finish, codes open at once per agent, attempts (opens and joins) per
    #: minute from one address and in all
    pairing_code_ttl: float = 300.0
    pairing_timeout: float = 60.0
    pairings_per_agent: int = 4
    pairings_per_ip_per_minute: int = 10
    pairings_per_minute: int = 60

    def connection_limits(self) -> ConnectionLimits:
        """What the relay's connection tracker enforces before a handshake is finished."""
        return ConnectionLimits(
            handshake_timeout=self.handshake_timeout,
            handshakes_per_ip=self.handshakes_per_ip,
            handshakes_total=self.handshakes_total,
            connections_per_ip=self.connections_per_ip,
            refusal_delay=self.refusal_delay,
            exempt=frozenset(self.per_ip_exempt),
        )


_INT_LIMITS = {
    "max_agents": (1, 1_000_000),
    "links_per_agent": (1, 1_000_000),
    "links_per_client": (1, 1_000_000),
    "handshakes_per_ip": (1, 1_000_000),
    "handshakes_total": (1, 1_000_000),
    "connections_per_ip": (1, 1_000_000),
    "pending_dials_per_agent": (1, 100_000),
    "max_message_size": (1024, 64 * 1024 * 1024),
    "pending_buffer": (1024, 64 * 1024 * 1024),
    "pairings_per_agent": (1, 1000),
    "pairings_per_ip_per_minute": (1, 1_000_000),
    "pairings_per_minute": (1, 1_000_000),
}
_FLOAT_LIMITS = {
    "dial_timeout": (0.1, 3600.0),
    "ping_interval": (1.0, 3600.0),
    "ping_timeout": (1.0, 3600.0),
    "handshake_timeout": (0.1, 300.0),
    "refusal_delay": (0.0, 60.0),
    "status_per_second": (0.1, 1_000_000.0),
    "pairing_code_ttl": (0.1, 3600.0),
    "pairing_timeout": (0.1, 3600.0),
}
_ADDRESS_LISTS = ("per_ip_exempt",)


@attrs.frozen
class ClientEntry:
    """A client: its token hash and the agents it may reach (None means all)."""

    token_sha256: bytes
    agents: frozenset[str] | None


@attrs.frozen
class RelayConfig:
    """A parsed relay.toml."""

    source: str
    agents: Mapping[str, bytes]
    clients: Mapping[str, ClientEntry]
    limits: Limits = Limits()
    #: parsed extra sections (e.g. ``[hub]``), by name; absent ones are parsed from ``{}``
    sections: Mapping[str, Any] = attrs.field(factory=dict)


def load_config(path: str, sections: Mapping[str, SectionParser] | None = None) -> RelayConfig:
    """Read and check relay.toml at PATH; SECTIONS parse its extra tables (``[hub]``)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    return parse_config(data, path, sections)


def parse_config(
    data: Mapping[str, Any], source: str, sections: Mapping[str, SectionParser] | None = None
) -> RelayConfig:
    """Check the already-decoded TOML DATA; SOURCE names it in errors."""
    sections = sections or {}

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: {problem}")

    known = ("agents", "clients", "limits", *sections)
    for key in data:
        if key not in known:
            expected = ", ".join(["[agents.NAME]", "[clients.NAME]", "[limits]"])
            expected += "".join(f", [{name}]" for name in sections)
            raise fail(key, f"unknown key (expected {expected})")

    seen: dict[bytes, str] = {}

    def token_hash(key: str, entry: Mapping[str, Any]) -> bytes:
        value = entry.get("token_sha256")
        if value is None:
            raise fail(f"{key}.token_sha256", "missing")
        if not isinstance(value, str) or len(value) != 64:
            raise fail(f"{key}.token_sha256", "must be 64 hex digits (sha256 of the token)")
        try:
            digest = bytes.fromhex(value)
        except ValueError:
            raise fail(f"{key}.token_sha256", "must be 64 hex digits") from None
        if digest in seen:
            raise fail(f"{key}.token_sha256", f"same token as {seen[digest]}")
        seen[digest] = key
        return digest

    def table(key: str) -> Mapping[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise fail(key, "must be a table")
        return value

    def named_entry(kind: str, name: str, entry: Any, keys: set[str]) -> bytes:
        """Check the table [agents.NAME] or [clients.NAME] (KIND), whose keys may be KEYS.

        Returns the digest of its token.
        """
        key = f"{kind}s.{name}"
        if not valid_name(name):
            raise fail(key, f"invalid {kind} name (letters, digits, '.', '_', '-'; max 64)")
        if not isinstance(entry, dict):
            raise fail(key, "must be a table")
        for extra in entry.keys() - keys:
            raise fail(f"{key}.{extra}", "unknown key")
        return token_hash(key, entry)

    agents: dict[str, bytes] = {}
    for name, entry in table("agents").items():
        agents[name] = named_entry("agent", name, entry, {"token_sha256"})

    clients: dict[str, ClientEntry] = {}
    for name, entry in table("clients").items():
        digest = named_entry("client", name, entry, {"token_sha256", "agents"})
        key = f"clients.{name}.agents"
        clients[name] = ClientEntry(digest, _client_agents(fail, key, entry, agents))

    parsed = {name: parse(fail, table(name)) for name, parse in sections.items()}
    return RelayConfig(source, agents, clients, _parse_limits(fail, table("limits")), parsed)


def _client_agents(
    fail: Any, key: str, entry: Mapping[str, Any], agents: Mapping[str, bytes]
) -> frozenset[str] | None:
    value = entry.get("agents")
    if value is None:
        raise fail(key, 'missing (a list of agent names, or ["*"])')
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise fail(key, 'must be a list of agent names, or ["*"]')
    if ALL_AGENTS in value:
        if value != [ALL_AGENTS]:
            raise fail(key, '"*" must be the only entry')
        return None
    for agent in value:
        if agent not in agents:
            raise fail(key, f"{agent!r} has no [agents.{agent}] entry")
    return frozenset(value)


def _parse_limits(fail: Any, table: Mapping[str, Any]) -> Limits:
    values: dict[str, Any] = {}
    for name, value in table.items():
        key = f"limits.{name}"
        low: float
        high: float
        if name in _ADDRESS_LISTS:
            values[name] = _address_list(fail, key, value)
            continue
        if name in _INT_LIMITS:
            low, high = _INT_LIMITS[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise fail(key, "must be an integer")
        elif name in _FLOAT_LIMITS:
            low, high = _FLOAT_LIMITS[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise fail(key, "must be a number of seconds")
            value = float(value)
        else:
            known = ", ".join(sorted([*_INT_LIMITS, *_FLOAT_LIMITS, *_ADDRESS_LISTS]))
            raise fail(key, f"unknown limit (known: {known})")
        if not low <= value <= high:
            raise fail(key, f"must be between {low} and {high}")
        values[name] = value
    return Limits(**values)


def _address_list(fail: Any, key: str, value: Any) -> tuple[str, ...]:
    """A list of IP addresses, each written as a peer's address is ("0:0:0:0:0:0:0:1" is
    "::1", "::ffff:127.0.0.1" is "127.0.0.1", see ``nbbridge.websocket.peer_ip``): written
    otherwise, it never matched."""
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise fail(key, 'must be a list of IP addresses, e.g. ["127.0.0.1", "::1"]')
    addresses = []
    for address in value:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise fail(key, f"{address!r} is not an IP address") from None
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        addresses.append(str(mapped or ip))
    return tuple(addresses)
