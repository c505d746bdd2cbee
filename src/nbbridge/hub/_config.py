"""The `[hub]` section of relay.toml: where the hub lives, its limits, and who may use which topic.

```toml
[hub]
prefix = "/hub"                 # topics are ws(s)://RELAY/hub/<topic>
queue_bytes = 1048576           # per-receiver queue cap (bytes) while its connection is full
max_queued_bytes = 67108864     # all receivers' queues together; new members refused at it
max_message_size = 1048576      # bytes; not above queue_bytes
max_topics = 1000
max_members = 1000              # hub connections in all
max_members_per_topic = 256
max_members_per_address = 64    # hub connections from one IP address
stats_interval = 5.0            # seconds between /stats/ws updates (and the page's refresh)
stats_requests_per_second = 10  # /stats/... and /metrics requests, all callers together
stats_token_sha256 = "<hex>"    # /stats/json, /stats/ws and /metrics in full need this token
stats_anonymous = "totals"      # what they show without it: "totals", "none" or "full"

[hub.tokens.camera]             # a token the access rules can name
token_sha256 = "<hex>"

[[hub.access]]                  # first rule whose pattern matches the topic decides
topics = ["lab/*"]              # fnmatch patterns (`*` also matches `/`)
send = ["camera"]               # tokens that may send; leave out = anyone; "*" = any hub token
read = ["*"]                    # tokens that may read; leave out = anyone
```

Without rules (the default) anyone may send and read every topic. Pure parsing: no I/O beyond
what the caller passes in; imports nothing from the relay (the relay's config imports this).
"""

from __future__ import annotations

import fnmatch
import hmac
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

from nbbridge._secrets import token_digest

from ._routes import topic_problem

#: In a rule's `send` or `read` list: any token named in [hub.tokens].
ANY_TOKEN = "*"
#: First path segments the hub's prefix may not take: the relay's own routes.
RESERVED_PREFIXES = frozenset({"v1", "status", "stats", "metrics"})

Fail = Callable[[str, str], Exception]
#: What a stats request sees: everything; totals only (no topic, token or address); nothing.
StatsView = Literal["full", "totals", "none"]
STATS_VIEWS: tuple[StatsView, ...] = ("full", "totals", "none")


@attrs.frozen
class AccessRule:
    """Topics matching PATTERNS: who may send, who may read (None = anyone, even no token)."""

    patterns: tuple[str, ...]
    send: frozenset[str] | None = None
    read: frozenset[str] | None = None

    def matches(self, topic: str) -> bool:
        return any(fnmatch.fnmatchcase(topic, p) for p in self.patterns)


@attrs.frozen
class HubConfig:
    """A parsed `[hub]` section (or the defaults when there is none)."""

    enabled: bool = True
    prefix: str = "/hub"
    # Defaults fit a public relay: at most max_queued_bytes queued in all (64 MiB), whatever
    # the members do, plus each member's transport buffer.
    queue_bytes: int = 1024 * 1024
    max_queued_bytes: int = 64 * 1024 * 1024
    max_message_size: int = 1024 * 1024
    max_topics: int = 1000
    max_members: int = 1000
    max_members_per_topic: int = 256
    max_members_per_address: int = 64
    stats_interval: float = 5.0
    #: requests to /stats (its page, JSON, login, WebSocket) and /metrics, per second in all
    stats_requests_per_second: float = 10.0
    #: rates are measured over this many seconds
    rate_window: float = 5.0
    stats_token_sha256: bytes | None = attrs.field(default=None, repr=False)
    #: what /stats/json, /stats/ws and /metrics show a request without the stats token
    stats_anonymous: StatsView = "totals"
    tokens: Mapping[str, bytes] = attrs.field(factory=dict, repr=False)
    access: tuple[AccessRule, ...] = ()

    @property
    def prefix_segments(self) -> list[bytes]:
        return [s.encode("ascii") for s in self.prefix.strip("/").split("/")]

    def token_name(self, token: str | None) -> str | None:
        """The name of the [hub.tokens] entry TOKEN matches, or None (constant time per entry)."""
        if token is None:
            return None
        digest = token_digest(token)
        found = None
        for name, expected in self.tokens.items():
            if hmac.compare_digest(digest, expected):
                found = name
        return found

    def stats_allowed(self, token: str | None) -> bool:
        """Whether TOKEN is the stats token (never, when none is configured)."""
        if self.stats_token_sha256 is None or token is None:
            return False
        digest = token_digest(token)
        return hmac.compare_digest(digest, self.stats_token_sha256)

    def stats_view(self, token: str | None) -> StatsView:
        """What a stats request with TOKEN (or None) may see: "full", "totals" or "none"."""
        return "full" if self.stats_allowed(token) else self.stats_anonymous


_INTS = {
    "queue_bytes": (1024, 1024**3),
    "max_queued_bytes": (1024, 64 * 1024**3),
    "max_message_size": (16, 64 * 1024 * 1024),
    "max_topics": (1, 10_000_000),
    "max_members": (1, 10_000_000),
    "max_members_per_topic": (1, 10_000_000),
    "max_members_per_address": (1, 10_000_000),
}
_FLOATS = {
    "stats_interval": (0.01, 3600.0),
    "rate_window": (0.1, 3600.0),
    "stats_requests_per_second": (0.1, 1_000_000.0),
}
_KNOWN = {
    *_INTS,
    *_FLOATS,
    "enabled",
    "prefix",
    "stats_token_sha256",
    "stats_anonymous",
    "tokens",
    "access",
}


def parse_hub_config(fail: Fail, table: Mapping[str, Any]) -> HubConfig:
    """Check the decoded `[hub]` TABLE; FAIL(key, problem) builds the error to raise."""
    values: dict[str, Any] = {}
    for name, value in table.items():
        key = f"hub.{name}"
        if name not in _KNOWN:
            raise fail(key, f"unknown key (known: {', '.join(sorted(_KNOWN))})")
        if name in _INTS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise fail(key, "must be an integer")
            low, high = _INTS[name]
            if not low <= value <= high:
                raise fail(key, f"must be between {low} and {high}")
            values[name] = value
        elif name in _FLOATS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise fail(key, "must be a number of seconds")
            flow, fhigh = _FLOATS[name]
            if not flow <= value <= fhigh:
                raise fail(key, f"must be between {flow} and {fhigh}")
            values[name] = float(value)
        elif name == "enabled":
            if not isinstance(value, bool):
                raise fail(key, "must be true or false")
            values[name] = value
        elif name == "prefix":
            values[name] = _prefix(fail, key, value)
        elif name == "stats_token_sha256":
            values[name] = _digest(fail, key, value)
        elif name == "stats_anonymous":
            if value not in STATS_VIEWS:
                raise fail(key, 'must be "totals", "none" or "full"')
            values[name] = value
    tokens = _tokens(fail, table.get("tokens", {}))
    values["tokens"] = tokens
    values["access"] = _rules(fail, table.get("access", []), tokens)
    config = HubConfig(**values)
    if config.max_message_size > config.queue_bytes:
        raise fail("hub.max_message_size", "must not exceed hub.queue_bytes")
    if config.queue_bytes > config.max_queued_bytes:
        raise fail("hub.queue_bytes", "must not exceed hub.max_queued_bytes")
    return config


def _prefix(fail: Fail, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise fail(key, 'must be a path such as "/hub"')
    prefix = value.rstrip("/")
    segments = prefix.split("/")[1:]
    if not segments or topic_problem("/".join(segments)) is not None:
        raise fail(key, "must be '/' and one or more segments of letters, digits, '.', '_', '-'")
    if segments[0] in RESERVED_PREFIXES:
        raise fail(key, f"/{segments[0]} is one of the relay's own routes")
    return prefix


def _digest(fail: Fail, key: str, value: Any) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise fail(key, "must be 64 hex digits (sha256 of the token)")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise fail(key, "must be 64 hex digits") from None


def _tokens(fail: Fail, table: Any) -> dict[str, bytes]:
    if not isinstance(table, dict):
        raise fail("hub.tokens", "must be a table of [hub.tokens.NAME] entries")
    tokens: dict[str, bytes] = {}
    seen: dict[bytes, str] = {}
    for name, entry in table.items():
        key = f"hub.tokens.{name}"
        if name == ANY_TOKEN or topic_problem(name) is not None or "/" in name:
            raise fail(key, "invalid token name (letters, digits, '.', '_', '~', '-')")
        if not isinstance(entry, dict):
            raise fail(key, "must be a table with token_sha256")
        for extra in entry.keys() - {"token_sha256"}:
            raise fail(f"{key}.{extra}", "unknown key")
        if "token_sha256" not in entry:
            raise fail(f"{key}.token_sha256", "missing")
        digest = _digest(fail, f"{key}.token_sha256", entry["token_sha256"])
        if digest in seen:
            raise fail(f"{key}.token_sha256", f"same token as hub.tokens.{seen[digest]}")
        seen[digest] = name
        tokens[name] = digest
    return tokens


def _rules(fail: Fail, value: Any, tokens: Mapping[str, bytes]) -> tuple[AccessRule, ...]:
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise fail("hub.access", "must be a list of [[hub.access]] tables")
    rules = []
    for i, rule in enumerate(value):
        key = f"hub.access[{i}]"
        for extra in rule.keys() - {"topics", "send", "read"}:
            raise fail(f"{key}.{extra}", "unknown key (expected topics, send, read)")
        patterns = rule.get("topics")
        if isinstance(patterns, str):
            patterns = [patterns]
        if (
            not isinstance(patterns, list)
            or not patterns
            or not all(isinstance(p, str) and p for p in patterns)
        ):
            raise fail(f"{key}.topics", "must be a pattern or a list of fnmatch patterns")
        if "send" not in rule and "read" not in rule:
            raise fail(key, "names neither send nor read: it would restrict nothing")
        rules.append(
            AccessRule(
                tuple(patterns),
                send=_names(fail, f"{key}.send", rule.get("send"), tokens),
                read=_names(fail, f"{key}.read", rule.get("read"), tokens),
            )
        )
    return tuple(rules)


def _names(fail: Fail, key: str, value: Any, tokens: Mapping[str, bytes]) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise fail(key, 'must be a list of [hub.tokens] names, or ["*"]')
    for name in value:
        if name != ANY_TOKEN and name not in tokens:
            raise fail(key, f"{name!r} has no [hub.tokens.{name}] entry")
    return frozenset(value)
