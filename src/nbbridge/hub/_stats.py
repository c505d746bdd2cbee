"""Traffic counters with rates over a sliding window, and the stats document built from them.

Counting is a few integer additions per message; rates come from samples of the cumulative
counters taken about once a second (`Counters.sample`), so nothing per message reads a clock
twice or keeps a list. The JSON document (`snapshot`) is what `/stats/json`, `/stats/ws` and the
page show; docs/hub.md describes its schema.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from .. import __version__

if TYPE_CHECKING:
    from ._core import Hub, Member, Topic

#: The counters whose rates are reported, in the order samples store them.
RATE_FIELDS = ("messages_in", "bytes_in", "messages_out", "bytes_out")


@attrs.define(eq=False)
class Counters:
    """Cumulative traffic of a connection, a topic or the whole hub."""

    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    #: messages for a slow receiver dropped because its queue went over the cap
    dropped: int = 0
    dropped_bytes: int = 0
    #: messages an `out` member sent, which the hub discards
    ignored: int = 0
    ignored_bytes: int = 0
    last_activity: float | None = None
    _samples: deque[tuple[float, int, int, int, int]] = attrs.field(factory=deque)

    def sample(self, now: float, window: float) -> None:
        """Remember the counters at NOW; forget samples the window no longer needs."""
        samples = self._samples
        samples.append((now, self.messages_in, self.bytes_in, self.messages_out, self.bytes_out))
        # Keep the newest sample at or before the window's start: rates span the whole window.
        while len(samples) >= 2 and samples[1][0] <= now - window:
            samples.popleft()

    def rates(self, now: float) -> dict[str, float]:
        """Per-second rates since the oldest kept sample (about the last window)."""
        if not self._samples:
            return dict.fromkeys(RATE_FIELDS, 0.0)
        then, *old = self._samples[0]
        elapsed = now - then
        current = (self.messages_in, self.bytes_in, self.messages_out, self.bytes_out)
        if elapsed <= 0:
            return dict.fromkeys(RATE_FIELDS, 0.0)
        return {
            name: round((cur - was) / elapsed, 3)
            for name, cur, was in zip(RATE_FIELDS, current, old, strict=True)
        }

    def figures(self, now: float) -> dict[str, Any]:
        """The counters and rates as JSON-ready values."""
        return {
            "messages_in": self.messages_in,
            "bytes_in": self.bytes_in,
            "messages_out": self.messages_out,
            "bytes_out": self.bytes_out,
            "dropped": self.dropped,
            "dropped_bytes": self.dropped_bytes,
            "ignored": self.ignored,
            "ignored_bytes": self.ignored_bytes,
            "rates": self.rates(now),
            "last_activity": self.last_activity,
        }


def member_figures(member: Member, now: float, prefix: str) -> dict[str, Any]:
    """One connection's entry in the stats document."""
    return {
        "id": member.id,
        "remote": member.remote,
        "route": member.route.path(prefix),
        "role": member.route.role.value,
        "since": member.since,
        "queued_bytes": member.queued_bytes,
        "peak_queued_bytes": member.peak_queued_bytes,
        "paused": member.full,
        **member.counters.figures(now),
    }


def topic_figures(topic: Topic, now: float, prefix: str) -> dict[str, Any]:
    """One topic's entry in the stats document, with its connections."""
    members = list(topic.members.values())
    return {
        "name": topic.name,
        "kind": topic.kind.value,
        "since": topic.since,
        "members": len(members),
        "senders": sum(1 for m in members if m.route.role.sends),
        "readers": sum(1 for m in members if m.route.role.reads),
        "queued_bytes": sum(m.queued_bytes for m in members),
        **topic.counters.figures(now),
        "connections": [member_figures(m, now, prefix) for m in members],
    }


def snapshot(
    hub: Hub, tunnel: dict[str, Any] | None = None, cluster: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The whole stats document: totals, the tunnel's counters, every topic and connection.

    CLUSTER is the figures of every relay sharing the hub's topics (`TopicBridge.figures`),
    None for a relay on its own.
    """
    now = hub.clock.seconds()
    prefix = hub.config.prefix
    topics: Iterable[Topic] = sorted(hub.topics.values(), key=lambda t: (t.name, t.kind.value))
    return {
        "type": "nbbridge-hub-stats",
        "version": __version__,
        "time": now,
        "interval": hub.config.stats_interval,
        "window": hub.config.rate_window,
        "prefix": prefix,
        "totals": {
            "topics": len(hub.topics),
            "members": hub.member_count,
            "queued_bytes": hub.queued_bytes,
            "slow_closes": hub.slow_closes,
            "refused": dict(hub.refused),
            **hub.totals.figures(now),
        },
        "tunnel": tunnel,
        "cluster": cluster,
        "topics": [topic_figures(t, now, prefix) for t in topics],
    }
