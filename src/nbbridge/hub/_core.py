"""The hub's state, sans-IO: topics, their members, fan-out and the per-receiver queues.

A message goes straight to each receiver's connection while that connection's transport takes
data. When a receiver's transport says it is full (its producer was paused), the hub queues for
it, up to `queue_bytes`, and all receivers' queues together up to `max_queued_bytes`. Beyond
either cap a one-way stream reader (`out`) loses its oldest queued messages (counted as drops)
and a two-way member is closed with 4429 "too slow". A sender is never paused for a receiver,
so one slow receiver never slows the sender or anyone else, and what the hub queues stays under
`max_queued_bytes` in all (plus one transport buffer per member). Once the queues reach that
budget, new members are refused (4429, naming the limit) until they drain.

The core never touches a transport or the reactor: connections are `MemberPeer`s and time comes
from an injected `IReactorTime`.
"""

from __future__ import annotations

import collections
import ipaddress
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ._access import Refused, check_access
from ._config import HubConfig
from ._routes import BadRoute, HubCloseCode, HubRoute, Role, TopicKind
from ._stats import Counters


@attrs.define(eq=False, slots=True)
class Message:
    """One message on its way through the hub, shared by every receiver's queue."""

    size: int
    is_binary: bool
    #: what the connection layer sends (a prepared frame); the core never looks inside
    frame: Any
    #: the message itself, for relays that share topics over a bus (`hub._cluster`)
    payload: bytes = b""


class MemberPeer(Protocol):
    """A hub connection, as the core sees it."""

    def send(self, message: Message) -> None:
        """Write MESSAGE to the connection now."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection with CODE and REASON."""


@attrs.define(eq=False)
class Member:
    """One connection on a topic."""

    id: int
    route: HubRoute
    remote: str
    peer: MemberPeer
    since: float
    topic: Topic
    token_name: str | None = None
    counters: Counters = attrs.field(factory=Counters)
    #: the connection's transport asked us to stop writing
    full: bool = False
    queue: deque[Message] = attrs.field(factory=deque)
    queued_bytes: int = 0
    peak_queued_bytes: int = 0
    left: bool = False


@attrs.define(eq=False)
class Topic:
    """A topic (two-way) or a stream (one-way); it exists while it has members."""

    name: str
    kind: TopicKind
    since: float
    members: dict[int, Member] = attrs.field(factory=dict)
    #: who receives what a sender sends; rebuilt on join and leave, so fan-out may close members
    readers: tuple[Member, ...] = ()
    counters: Counters = attrs.field(factory=Counters)

    def _rebuild(self) -> None:
        self.readers = tuple(m for m in self.members.values() if m.route.role.reads)


Observer = Callable[[str, Member], None]
#: Told of every message a local sender sent on a topic, after the local fan-out.
PublishHook = Callable[[Topic, Message], None]


def address_of(remote: str) -> str | None:
    """The host part of a `host:port` or `[v6]:port` REMOTE, as `max_members_per_address` counts.

    None for a loopback address: that is a reverse proxy on the relay's host (every client
    behind it would share one count) or a local tool. Limit clients per address at the proxy.
    """
    host, sep, _port = remote.rpartition(":")
    host = host if sep else remote
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:
        pass
    return host


class Hub:
    """Topics and members, and what happens to each message."""

    _log = Logger()

    def __init__(self, config: HubConfig, clock: IReactorTime) -> None:
        self.config = config
        self.clock = clock
        self.topics: dict[tuple[TopicKind, str], Topic] = {}
        self.totals = Counters()
        # Every counter starts with a sample, so traffic before the first tick shows in rates.
        self.totals.sample(clock.seconds(), config.rate_window)
        self.slow_closes = 0
        self.refused: collections.Counter[str] = collections.Counter()
        self.member_count = 0
        #: bytes queued for every receiver together (bounded by max_queued_bytes)
        self.queued_bytes = 0
        self._per_address: collections.Counter[str | None] = collections.Counter()
        self._next_id = 1
        self._observers: list[Observer] = []
        #: set when topics span relays (`hub._cluster.TopicBridge`): local messages go out too
        self.on_publish: PublishHook | None = None

    def add_observer(self, observer: Observer) -> Callable[[], None]:
        """Call OBSERVER(event, member) on each hub event; returns a function that removes it.

        Events: joined, left, dropped, ignored, too-slow.
        For tests and tools: lets them wait for the hub to reach a state without polling.
        """
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    def _notify(self, event: str, member: Member) -> None:
        for observer in list(self._observers):
            observer(event, member)

    def members(self) -> Iterator[Member]:
        """Every member of every topic."""
        for topic in self.topics.values():
            yield from topic.members.values()

    # -- joining and leaving -------------------------------------------------------------------

    def join(
        self, route: HubRoute | BadRoute, token: str | None, peer: MemberPeer, remote: str
    ) -> Member | Refused:
        """A connection opened on ROUTE: refuse it, or make it a member of its topic."""
        refusal = self._check(route, token, address_of(remote))
        if isinstance(refusal, Refused):
            self.refused[refusal.kind] += 1
            self._log.info(
                "hub connection from {remote} refused: {reason}",
                remote=remote,
                reason=refusal.reason,
            )
            return refusal
        assert isinstance(route, HubRoute)
        now = self.clock.seconds()
        key = (route.kind, route.topic)
        topic = self.topics.get(key)
        if topic is None:
            topic = self.topics[key] = Topic(route.topic, route.kind, now)
            topic.counters.sample(now, self.config.rate_window)
        member = Member(self._next_id, route, remote, peer, now, topic, refusal)
        member.counters.sample(now, self.config.rate_window)
        self._next_id += 1
        topic.members[member.id] = member
        topic._rebuild()
        self.member_count += 1
        address = address_of(remote)
        if address is not None:
            self._per_address[address] += 1
        self._log.info(
            "hub: {remote} joined {topic} as {role} (#{id})",
            remote=remote,
            topic=route.topic,
            role=route.role.value,
            id=member.id,
        )
        self._notify("joined", member)
        return member

    def _check(
        self, route: HubRoute | BadRoute, token: str | None, address: str | None
    ) -> Refused | str | None:
        if isinstance(route, BadRoute):
            return Refused(HubCloseCode.BAD_TOPIC, route.reason, "bad_topic")
        limit = self._limit_reached(route, address)
        if limit is not None:
            return Refused(HubCloseCode.LIMIT, limit, "limit")
        return check_access(self.config, route, token)

    def _limit_reached(self, route: HubRoute, address: str | None) -> str | None:
        """Which hub limit a new member on ROUTE from ADDRESS would pass, as a close reason."""
        config = self.config
        topic = self.topics.get((route.kind, route.topic))
        if self.queued_bytes >= config.max_queued_bytes:
            return (
                f"hub limit max_queued_bytes reached: {self.queued_bytes} bytes queued for slow "
                f"receivers (budget {config.max_queued_bytes}); try again later"
            )
        if self.member_count >= config.max_members:
            return f"hub limit max_members reached: at most {config.max_members} connections"
        if address is not None and self._per_address[address] >= config.max_members_per_address:
            return (
                f"hub limit max_members_per_address reached: at most "
                f"{config.max_members_per_address} connections from one address"
            )
        if topic is None and len(self.topics) >= config.max_topics:
            return f"hub limit max_topics reached: at most {config.max_topics} topics"
        if topic is not None and len(topic.members) >= config.max_members_per_topic:
            return (
                f"hub limit max_members_per_topic reached: at most "
                f"{config.max_members_per_topic} connections per topic"
            )
        return None

    def leave(self, member: Member) -> None:
        """MEMBER's connection closed (or is being closed): take it off its topic."""
        if member.left:
            return
        member.left = True
        member.queue.clear()
        self.queued_bytes -= member.queued_bytes
        member.queued_bytes = 0
        topic = member.topic
        del topic.members[member.id]
        topic._rebuild()
        self.member_count -= 1
        address = address_of(member.remote)
        if address is not None:
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]
        if not topic.members:
            del self.topics[(topic.kind, topic.name)]
        self._log.info(
            "hub: #{id} left {topic} after {msgs_in} messages in, {msgs_out} out",
            id=member.id,
            topic=topic.name,
            msgs_in=member.counters.messages_in,
            msgs_out=member.counters.messages_out,
        )
        self._notify("left", member)

    # -- messages ------------------------------------------------------------------------------

    def publish(self, member: Member, message: Message) -> None:
        """MEMBER sent MESSAGE: count it, and hand it to every other reader of its topic."""
        if member.left:
            return
        now = self.clock.seconds()
        size = message.size
        topic = member.topic
        for c in (member.counters, topic.counters, self.totals):
            c.messages_in += 1
            c.bytes_in += size
            c.last_activity = now
        if not member.route.role.sends:
            for c in (member.counters, topic.counters, self.totals):
                c.ignored += 1
                c.ignored_bytes += size
            self._notify("ignored", member)
            return
        self._fan_out(topic, message, member, now)
        if self.on_publish is not None:
            self.on_publish(topic, message)

    def deliver(self, kind: TopicKind, name: str, message: Message) -> bool:
        """MESSAGE came from a sender on another relay: hand it to this relay's readers.

        The same per-reader queues, caps and drops apply as to a local sender's messages;
        it counts as delivered (``messages_out``), not as received (``messages_in`` counts
        what this relay's own senders sent). False if the topic has no members here.
        """
        topic = self.topics.get((kind, name))
        if topic is None:
            return False
        self._fan_out(topic, message, None, self.clock.seconds())
        return True

    def _fan_out(self, topic: Topic, message: Message, sender: Member | None, now: float) -> None:
        sent = 0
        for reader in topic.readers:
            if reader is sender or reader.left:
                continue
            if reader.full or reader.queue:
                self._enqueue(reader, message)
            else:
                self._send(reader, message, now)
                sent += 1
        self._delivered(topic, sent, sent * message.size, now)

    def _send(self, reader: Member, message: Message, now: float) -> None:
        """Write MESSAGE to READER and count it on READER's own counters.

        The topic's and the hub's delivery counters are the caller's to update, once for all
        it sent (`_delivered`): a fan-out to many readers then costs one update of them, not
        one per reader.
        """
        reader.peer.send(message)
        c = reader.counters
        c.messages_out += 1
        c.bytes_out += message.size
        c.last_activity = now

    def _delivered(self, topic: Topic, messages: int, size: int, now: float) -> None:
        """Count MESSAGES deliveries of SIZE payload bytes in all on TOPIC and the totals.

        Each delivery counts (one message to 100 readers is 100 out, as docs/hub.md says).
        """
        if not messages:
            return
        for c in (topic.counters, self.totals):
            c.messages_out += messages
            c.bytes_out += size
            c.last_activity = now

    def _over(self, reader: Member) -> bool:
        """Whether READER's queue is over its own cap, or all queues over the hub's budget."""
        return (
            reader.queued_bytes > self.config.queue_bytes
            or self.queued_bytes > self.config.max_queued_bytes
        )

    def _enqueue(self, reader: Member, message: Message) -> None:
        reader.queue.append(message)
        reader.queued_bytes += message.size
        self.queued_bytes += message.size
        if not self._over(reader):
            reader.peak_queued_bytes = max(reader.peak_queued_bytes, reader.queued_bytes)
            return
        cap = self.config.queue_bytes
        if reader.route.role is Role.OUT:
            # A stream reader wants the newest data (video): the oldest goes first. Over the
            # hub's budget, the reader whose queue grew sheds (possibly this very message).
            while reader.queue and self._over(reader):
                old = reader.queue.popleft()
                reader.queued_bytes -= old.size
                self.queued_bytes -= old.size
                for c in (reader.counters, reader.topic.counters, self.totals):
                    c.dropped += 1
                    c.dropped_bytes += old.size
                self._notify("dropped", reader)
            reader.peak_queued_bytes = max(reader.peak_queued_bytes, reader.queued_bytes)
            return
        # A two-way member would miss part of a conversation: better to tell it plainly.
        if reader.queued_bytes > cap:
            reason = f"too slow: {reader.queued_bytes} bytes queued (cap {cap})"
        else:
            reason = (
                f"too slow: {reader.queued_bytes} bytes queued while the hub's queues are full "
                f"(max_queued_bytes {self.config.max_queued_bytes})"
            )
        self._log.info(
            "hub: closing #{id} on {topic}: {reason}",
            id=reader.id,
            topic=reader.topic.name,
            reason=reason,
        )
        self.slow_closes += 1
        self._notify("too-slow", reader)
        self.leave(reader)
        reader.peer.close(HubCloseCode.LIMIT, reason)

    def write_full_changed(self, member: Member, full: bool) -> None:
        """MEMBER's transport filled up (FULL) or drained: queue, or send what is queued."""
        member.full = full
        if full or member.left:
            return
        now = self.clock.seconds()
        queue = member.queue
        sent = sent_bytes = 0
        # Sending may fill the transport again (it then calls back with FULL): stop there.
        while queue and not member.full and not member.left:
            message = queue.popleft()
            member.queued_bytes -= message.size
            self.queued_bytes -= message.size
            self._send(member, message, now)
            sent += 1
            sent_bytes += message.size
        self._delivered(member.topic, sent, sent_bytes, now)

    # -- stats ---------------------------------------------------------------------------------

    def sample(self) -> None:
        """Take a rate sample of every counter (about once a second)."""
        now = self.clock.seconds()
        window = self.config.rate_window
        self.totals.sample(now, window)
        for topic in self.topics.values():
            topic.counters.sample(now, window)
            for member in topic.members.values():
                member.counters.sample(now, window)
