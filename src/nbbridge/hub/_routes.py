"""Hub routes and topic names, sans-IO: what a path under the hub's prefix means.

Paths (after the prefix, `/hub` by default):

* `<topic>`      joins the two-way topic `<topic>`: N:N, every member hears every other member.
* `in/<topic>`   sends into the one-way stream `<topic>` (1:N, or N:N senders to readers).
* `out/<topic>`  reads the one-way stream `<topic>`; what an `out` member sends is dropped.

Two-way topics and one-way streams are separate namespaces: `/hub/cam` and `/hub/in/cam`
never meet. A topic name is 1 to 128 characters of segments separated by `/`; a segment is
`[A-Za-z0-9._~-]+` and neither `.` nor `..`. The first segment of a two-way topic may not be
`in` or `out` (those name the stream routes).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence

import attrs

MAX_TOPIC_LENGTH = 128
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+\Z")
_RESERVED_FIRST = frozenset({"in", "out"})


class HubCloseCode(enum.IntEnum):
    """Close codes the hub sends (the reason text says what happened)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    BAD_TOPIC = 4400
    BAD_TOKEN = 4401
    NOT_PERMITTED = 4403
    TOO_BIG = 4413
    #: too slow (queue over its cap) or a hub limit reached
    LIMIT = 4429


class TopicKind(enum.Enum):
    """A two-way topic (N:N) or a one-way stream (`in` -> `out`)."""

    BOTH = "both"
    STREAM = "stream"


class Role(enum.Enum):
    """What a member does on its topic."""

    #: sends to and hears every other member of a two-way topic
    BOTH = "both"
    #: sends into a stream
    IN = "in"
    #: reads a stream
    OUT = "out"

    @property
    def kind(self) -> TopicKind:
        """The kind of topic this role belongs to."""
        return TopicKind.BOTH if self is Role.BOTH else TopicKind.STREAM

    @property
    def sends(self) -> bool:
        """Whether the hub forwards what this member sends."""
        return self is not Role.OUT

    @property
    def reads(self) -> bool:
        """Whether the hub sends this member what others send."""
        return self is not Role.IN


@attrs.frozen
class HubRoute:
    """A parsed hub path: which topic, and in which role."""

    role: Role
    topic: str

    @property
    def kind(self) -> TopicKind:
        return self.role.kind

    def path(self, prefix: str = "/hub") -> str:
        """The URL path of this route under PREFIX."""
        if self.role is Role.BOTH:
            return f"{prefix}/{self.topic}"
        return f"{prefix}/{self.role.value}/{self.topic}"


@attrs.frozen
class BadRoute:
    """Why a hub path names no route (sent as the close reason with 4400)."""

    reason: str


def topic_problem(topic: str) -> str | None:
    """What is wrong with TOPIC as a topic name, or None when it is valid."""
    if not topic:
        return "empty topic name"
    if len(topic) > MAX_TOPIC_LENGTH:
        return f"topic name longer than {MAX_TOPIC_LENGTH} characters"
    for segment in topic.split("/"):
        if not segment:
            return "empty segment in topic name (leading, trailing or double '/')"
        if segment in (".", ".."):
            return "'.' and '..' are not topic name segments"
        if _SEGMENT.match(segment) is None:
            return "topic names use only letters, digits, '.', '_', '~', '-' and '/'"
    return None


def valid_topic(topic: str) -> bool:
    """Whether TOPIC is a valid topic name."""
    return topic_problem(topic) is None


def parse_hub_path(segments: Sequence[str]) -> HubRoute | BadRoute:
    """Parse the path segments after the hub's prefix."""
    parts = list(segments)
    # A trailing slash (`/hub/x/`) is an empty last segment: part of the name, so refused.
    if parts and parts[0] in _RESERVED_FIRST:
        role = Role(parts[0])
        topic = "/".join(parts[1:])
        if not parts[1:]:
            return BadRoute(f"missing topic after '{role.value}/'")
    else:
        role, topic = Role.BOTH, "/".join(parts)
    problem = topic_problem(topic)
    if problem is not None:
        return BadRoute(problem)
    return HubRoute(role, topic)


def hub_path(topic: str, role: Role = Role.BOTH, prefix: str = "/hub") -> str:
    """The URL path that joins TOPIC in ROLE; ValueError for a bad name."""
    route = parse_hub_path(([role.value] if role is not Role.BOTH else []) + topic.split("/"))
    if isinstance(route, BadRoute):
        raise ValueError(f"invalid topic {topic!r}: {route.reason}")
    if route.role is not role:
        raise ValueError(f"a two-way topic name cannot start with {topic.split('/')[0]!r}/")
    return route.path(prefix)
