"""Publish/subscribe between relays: the `Bus` interface and its in-process implementation.

Relays that share a store also need to tell each other things as they happen ("dial this
link back to me", "a message for topic t"). Redis pub/sub carries those between processes
(`RedisBus`); `MemoryBus` does the same inside one process, for one relay and for tests.

The semantics are Redis's, so callers written against the memory bus keep working on Redis:

* **At most once, no history.** A message reaches the receivers subscribed when it is
  published; nothing is stored, and a message published while a subscriber is cut off
  (Redis restarting) is lost to it. Callers that need more keep state in the `Store`.
* **Order per channel and publisher**: messages one bus publishes on one channel arrive in
  that order.
* `publish` answers with the number of *buses* reached (processes subscribed to the
  channel — Redis's PUBLISH count), not of local receivers: it tells a caller whether anyone
  at all is listening.
* `subscribe` answers once the subscription is active: a message published after that (by
  anyone) reaches the receiver. Delivery is always on a later reactor turn, never inside
  `publish`; a receiver that raises is logged and does not disturb the others.
* Channels are non-empty `str`; messages are `bytes`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

#: Whoever receives a channel's messages.
Receiver = Callable[[bytes], None]


class Subscription(Protocol):
    """One receiver's subscription to one channel."""

    @property
    def channel(self) -> str:
        """The channel subscribed to."""

    def cancel(self) -> Deferred[None]:
        """Stop receiving (fires once no more messages will arrive); cancelling twice is fine."""


class Bus(Protocol):
    """Publish/subscribe channels between processes that share a store."""

    def publish(self, channel: str, message: bytes) -> Deferred[int]:
        """Send MESSAGE to everyone subscribed to CHANNEL now; the number of buses reached."""

    def subscribe(self, channel: str, receiver: Receiver) -> Deferred[Subscription]:
        """Call RECEIVER with every message on CHANNEL from when the answer fires on."""


def check_channel(channel: object) -> str:
    """CHANNEL if it is a non-empty str, else a clear error."""
    if not isinstance(channel, str):
        raise TypeError(f"bus channels are str, not {type(channel).__name__}")
    if not channel:
        raise ValueError("bus channels must not be empty")
    return channel


def check_message(message: object) -> bytes:
    """MESSAGE if it is bytes, else a clear error."""
    if not isinstance(message, bytes):
        raise TypeError(f"bus messages are bytes, not {type(message).__name__}")
    return message


def check_receiver(receiver: object) -> Receiver:
    if not callable(receiver):
        raise TypeError("a bus receiver is a callable taking the message")
    return receiver


class ReceiverTable:
    """channel -> the local receivers of one bus, in subscription order (shared by both buses)."""

    _log = Logger()

    def __init__(self) -> None:
        self._receivers: dict[str, list[_Entry]] = {}

    def __contains__(self, channel: str) -> bool:
        return channel in self._receivers

    def channels(self) -> list[str]:
        return list(self._receivers)

    def add(self, channel: str, receiver: Receiver) -> _Entry:
        entry = _Entry(channel, receiver)
        self._receivers.setdefault(channel, []).append(entry)
        return entry

    def remove(self, entry: _Entry) -> bool:
        """Forget ENTRY; True if its channel has no receivers left."""
        entries = self._receivers.get(entry.channel)
        if entries is None or entry not in entries:
            return False
        entries.remove(entry)
        if entries:
            return False
        del self._receivers[entry.channel]
        return True

    def deliver(self, channel: str, message: bytes) -> None:
        """Hand MESSAGE to CHANNEL's receivers; one that raises is logged, the rest still get it."""
        for entry in list(self._receivers.get(channel, ())):
            if not entry.active:
                continue
            try:
                entry.receiver(message)
            except Exception:
                self._log.failure("bus: a receiver of {channel!r} failed", channel=channel)


class _Entry:
    __slots__ = ("active", "channel", "receiver")

    def __init__(self, channel: str, receiver: Receiver) -> None:
        self.channel = channel
        self.receiver = receiver
        self.active = True


class _MemorySubscription:
    def __init__(self, bus: MemoryBus, entry: _Entry) -> None:
        self._bus = bus
        self._entry = entry

    @property
    def channel(self) -> str:
        return self._entry.channel

    def cancel(self) -> Deferred[None]:
        self._entry.active = False
        self._bus._table.remove(self._entry)
        return succeed(None)


class MemoryBus:
    """A `Bus` inside one process; buses made with ``shared_with`` reach each other.

    ``MemoryBus(clock)`` alone is one relay's bus. ``MemoryBus(clock, shared_with=other)``
    joins OTHER's network, as a second relay sharing a Redis would: a publish on either
    reaches the subscribers of both, and counts each bus with a subscriber once.
    """

    def __init__(self, clock: IReactorTime, *, shared_with: MemoryBus | None = None) -> None:
        self._clock = clock
        self._table = ReceiverTable()
        self._network: list[MemoryBus] = shared_with._network if shared_with else []
        self._network.append(self)

    def publish(self, channel: str, message: bytes) -> Deferred[int]:
        check_channel(channel), check_message(message)
        reached = [bus for bus in self._network if channel in bus._table]
        for bus in reached:
            # Each bus delivers on a later turn, in publish order (callLater(0) is FIFO).
            self._clock.callLater(0, bus._table.deliver, channel, message)
        d: Deferred[int] = Deferred()
        self._clock.callLater(0, d.callback, len(reached))
        return d

    def subscribe(self, channel: str, receiver: Receiver) -> Deferred[Subscription]:
        entry = self._table.add(check_channel(channel), check_receiver(receiver))
        d: Deferred[Subscription] = Deferred()
        self._clock.callLater(0, d.callback, _MemorySubscription(self, entry))
        return d
