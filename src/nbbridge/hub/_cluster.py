"""Topics that span relays: the hubs of several relays share each topic over a `Bus`.

When relays share a Redis, a sender on one relay and readers on another see one stream:

* every message a local sender sends goes to the local readers (as always) **and** is
  published on the topic's bus channel ``hub:<kind>:<topic>``;
* a relay subscribes to that channel only while it has readers of the topic, and hands what
  arrives to them through the same per-reader queues, caps and drops as a local message
  (`Hub.deliver`); its own messages, which come back too, are dropped by origin;
* each hub publishes a summary of its figures on ``hub:stats`` every stats interval and
  keeps the others' for three intervals: `/stats` adds them up (the ``cluster`` section,
  docs/hub.md).

Pub/sub is at most once: a relay cut off from Redis misses what is sent meanwhile (its own
members still hear each other). Nothing is kept in Redis. What one relay publishes reaches
the others in the order it was sent; messages from different relays interleave.

Envelope on the bus: 16 bytes of the sending hub's id, one flag byte (1: binary), payload.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from nbbridge._observer import Waiters
from nbbridge.store import Bus, Subscription

from ._core import Hub, Member, Message, Topic
from ._routes import TopicKind

#: Frames a payload for the hub's WebSockets: (payload, is_binary) -> prepared frame.
Framer = Callable[[bytes, bool], Any]

STATS_CHANNEL = "hub:stats"
_ID_BYTES = 16
#: A peer's summary counts for this many stats intervals after it arrived.
_PEER_LIFETIME = 3

#: The summed counters of the cluster's totals.
_SUMMED = (
    "members",
    "queued_bytes",
    "slow_closes",
    "messages_in",
    "bytes_in",
    "messages_out",
    "bytes_out",
    "dropped",
    "dropped_bytes",
    "ignored",
    "ignored_bytes",
)


def topic_channel(kind: TopicKind, name: str) -> str:
    """The bus channel of a topic."""
    return f"hub:{kind.value}:{name}"


class TopicBridge:
    """Connects one relay's `Hub` to the other relays' over BUS (see the module docstring)."""

    _log = Logger()

    def __init__(
        self, hub: Hub, bus: Bus, frame: Framer, clock: IReactorTime, relay_id: bytes | None = None
    ) -> None:
        self.hub = hub
        self.bus = bus
        self._frame = frame
        self._clock = clock
        self.id = relay_id if relay_id is not None else os.urandom(_ID_BYTES)
        if len(self.id) != _ID_BYTES:
            raise ValueError(f"a relay id is {_ID_BYTES} bytes")
        #: topic key -> its subscription, or None while it is being made
        self._subscriptions: dict[tuple[TopicKind, str], Subscription | None] = {}
        self._stats_subscription: Subscription | None = None
        self._stats_pending = False
        self._remove_observer: Callable[[], None] | None = None
        #: peer hub id (hex) -> (when its summary came, the summary)
        self.peers: dict[str, tuple[float, dict[str, Any]]] = {}
        self.published = 0
        self.received = 0
        self.publish_failures = 0
        self._failing = False
        self._running = False
        self._summaries: Waiters[str] = Waiters(clock)

    # -- life --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self.hub.on_publish = self._publish
        self._remove_observer = self.hub.add_observer(self._member_event)
        self.tick()

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self.hub.on_publish = None
        if self._remove_observer is not None:
            self._remove_observer()
            self._remove_observer = None
        subscriptions = [s for s in self._subscriptions.values() if s is not None]
        if self._stats_subscription is not None:
            subscriptions.append(self._stats_subscription)
        self._subscriptions.clear()
        self._stats_subscription = None
        for subscription in subscriptions:
            subscription.cancel().addErrback(lambda _: None)

    def tick(self) -> None:
        """Every stats interval: mend subscriptions (after a failure) and publish a summary."""
        if not self._running:
            return
        if self._stats_subscription is None and not self._stats_pending:
            self._subscribe_stats()
        for key in set(self._subscriptions) | set(self.hub.topics):
            self._reconcile(key)
        self._publish_summary()

    def subscribed(self) -> set[tuple[TopicKind, str]]:
        """The topics whose channel this relay is subscribed to (or subscribing to) now."""
        return set(self._subscriptions)

    def when_summary(self) -> Deferred[str]:
        """Fires with a peer's id when its next summary arrives (for tests and tools)."""
        return self._summaries.wait()

    # -- subscriptions -----------------------------------------------------------------------

    def _member_event(self, event: str, member: Member) -> None:
        if event in ("joined", "left", "too-slow"):
            self._reconcile((member.topic.kind, member.topic.name))

    def _wanted(self, key: tuple[TopicKind, str]) -> bool:
        topic = self.hub.topics.get(key)
        return self._running and topic is not None and bool(topic.readers)

    def _reconcile(self, key: tuple[TopicKind, str]) -> None:
        """Subscribe to KEY's channel while it has local readers; unsubscribe when it has none."""
        wanted = self._wanted(key)
        if key not in self._subscriptions:
            if wanted:
                self._subscribe(key)
            return
        subscription = self._subscriptions[key]
        if subscription is None or wanted:
            return  # being made (checked again when it is), or kept
        del self._subscriptions[key]
        subscription.cancel().addErrback(self._log_failure, "unsubscribing from a topic")

    def _subscribe(self, key: tuple[TopicKind, str]) -> None:
        self._subscriptions[key] = None
        kind, name = key

        def receive(envelope: bytes) -> None:
            self._received(kind, name, envelope)

        def made(subscription: Subscription) -> None:
            if self._subscriptions.get(key, False) is None and self._running:
                self._subscriptions[key] = subscription
                self._reconcile(key)  # the readers may have left meanwhile
            else:
                subscription.cancel()

        def failed(failure: Failure) -> None:
            if self._subscriptions.get(key, False) is None:
                del self._subscriptions[key]  # the next tick tries again
            self._log.warn(
                "hub: topic {topic} is served on this relay only for now: {error}",
                topic=name,
                error=failure.getErrorMessage(),
            )

        self.bus.subscribe(topic_channel(kind, name), receive).addCallbacks(made, failed)

    # -- messages ----------------------------------------------------------------------------

    def _publish(self, topic: Topic, message: Message) -> None:
        envelope = self.id + (b"\x01" if message.is_binary else b"\x00") + message.payload
        d = self.bus.publish(topic_channel(topic.kind, topic.name), envelope)
        d.addCallbacks(self._published, self._publish_failed)

    def _published(self, _reached: int) -> None:
        self.published += 1
        if self._failing:
            self._failing = False
            self._log.info("hub: messages reach the other relays again")

    def _publish_failed(self, failure: Failure) -> None:
        self.publish_failures += 1
        if not self._failing:
            self._failing = True
            self._log.warn(
                "hub: messages do not reach the other relays: {error}",
                error=failure.getErrorMessage(),
            )

    def _received(self, kind: TopicKind, name: str, envelope: bytes) -> None:
        origin, flag, payload = (
            envelope[:_ID_BYTES],
            envelope[_ID_BYTES : _ID_BYTES + 1],
            envelope[_ID_BYTES + 1 :],
        )
        if origin == self.id:
            return  # our own, back from the bus
        if len(origin) != _ID_BYTES or flag not in (b"\x00", b"\x01"):
            self._log.warn("hub: a malformed message on topic {topic} dropped", topic=name)
            return
        is_binary = flag == b"\x01"
        message = Message(len(payload), is_binary, self._frame(payload, is_binary), payload)
        if self.hub.deliver(kind, name, message):
            self.received += 1

    # -- the cluster's figures ---------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """This hub's figures, as the other relays add them up."""
        totals = self.hub.totals.figures(self.hub.clock.seconds())
        return {
            "relay": self.id.hex(),
            "topics": [[t.kind.value, t.name, len(t.members)] for t in self.hub.topics.values()],
            "totals": {
                "members": self.hub.member_count,
                "queued_bytes": self.hub.queued_bytes,
                "slow_closes": self.hub.slow_closes,
                **{k: totals[k] for k in _SUMMED if k in totals},
                "rates": totals["rates"],
            },
        }

    def _publish_summary(self) -> None:
        document = json.dumps(self.summary(), separators=(",", ":")).encode()
        self.bus.publish(STATS_CHANNEL, document).addErrback(lambda _: None)

    def _subscribe_stats(self) -> None:
        self._stats_pending = True

        def made(subscription: Subscription) -> None:
            self._stats_pending = False
            if self._running and self._stats_subscription is None:
                self._stats_subscription = subscription
            else:
                subscription.cancel()

        def failed(_: Failure) -> None:
            self._stats_pending = False  # the next tick tries again

        self.bus.subscribe(STATS_CHANNEL, self._summary_received).addCallbacks(made, failed)

    def _summary_received(self, document: bytes) -> None:
        try:
            summary = json.loads(document)
            relay = summary["relay"]
            totals = summary["totals"]
            if not isinstance(relay, str) or not isinstance(totals, dict):
                raise TypeError(relay)
            for kind, name, members in summary["topics"]:
                if not (isinstance(kind, str) and isinstance(name, str)):
                    raise TypeError(kind)
                if not isinstance(members, int):
                    raise TypeError(members)
        except (ValueError, KeyError, TypeError):
            self._log.warn("hub: a malformed stats summary on the bus dropped")
            return
        if relay != self.id.hex():
            self.peers[relay] = (self._clock.seconds(), summary)
            self._summaries.fire(relay)

    def figures(self, full: bool = True) -> dict[str, Any]:
        """The ``cluster`` section of the stats document: every live relay's figures summed."""
        now = self._clock.seconds()
        lifetime = _PEER_LIFETIME * self.hub.config.stats_interval
        for relay, (when, _) in list(self.peers.items()):
            if now - when > lifetime:
                del self.peers[relay]
        summaries = [self.summary()] + [summary for _, summary in self.peers.values()]
        totals: dict[str, Any] = dict.fromkeys(_SUMMED, 0)
        rates: dict[str, float] = {}
        topics: dict[tuple[str, str], dict[str, Any]] = {}
        for summary in summaries:
            for key in _SUMMED:
                value = summary["totals"].get(key, 0)
                totals[key] += value if isinstance(value, int | float) else 0
            for key, value in (summary["totals"].get("rates") or {}).items():
                rates[key] = round(rates.get(key, 0.0) + float(value), 3)
            for kind, name, members in summary["topics"]:
                entry = topics.setdefault(
                    (kind, name), {"name": name, "kind": kind, "members": 0, "relays": 0}
                )
                entry["members"] += members
                entry["relays"] += 1
        return {
            "relay": self.id.hex(),
            "relays": len(summaries),
            "totals": {"topics": len(topics), **totals, "rates": rates},
            "relayed": {
                "published": self.published,
                "received": self.received,
                "publish_failures": self.publish_failures,
            },
            "topics": [topics[k] for k in sorted(topics, key=lambda k: (k[1], k[0]))]
            if full
            else [],
        }

    def _log_failure(self, failure: Failure, what: str) -> None:
        self._log.warn("hub: {what} failed: {error}", what=what, error=failure.getErrorMessage())
