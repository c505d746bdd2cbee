"""The in-memory store: one process's state, TTLs kept on an injected clock.

The default for one relay. It behaves as a Redis store would, so that callers written against
it keep working when Redis replaces it:

* every answer arrives on a later reactor turn (never inside the call), as a network round
  trip would, so no caller comes to rely on a result being there at once;
* an expired key reads as absent at once, and its entry is removed lazily: when it is read,
  and by a sweep on every write that drops whatever has expired since (in expiry order, from
  a heap). Memory is therefore bounded by the keys alive plus, at most, those written since
  the last write — a stream of unique keys with TTLs does not grow it — and no timer of the
  store's own needs starting or stopping.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ._interface import check_key, check_ttl, check_value

T = TypeVar("T")

#: The expiry heap is rebuilt once stale entries (from refreshed or deleted keys) outnumber
#: the live ones by this factor, so frequent refreshes cannot grow it without bound.
_HEAP_SLACK = 2


@attrs.define(eq=False)
class _Entry:
    value: bytes
    #: clock time at which the key is gone (None: never)
    expires_at: float | None
    #: which heap item is this entry's current expiry (older items for the key are stale)
    stamp: int = 0


class MemoryStore:
    """`Store` in this process's memory, on CLOCK's time."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        #: (expires_at, stamp, key) for every expiry set; stale items are skipped when popped
        self._expiries: list[tuple[float, int, str]] = []
        self._stamps = itertools.count(1)
        #: answers waiting for the next turn, in the order their operations were issued
        self._answers: list[tuple[Deferred[Any], Any]] = []
        self._answering: IDelayedCall | None = None

    def __len__(self) -> int:
        """Entries held, expired or not (how much memory the store takes, for tests)."""
        return len(self._entries)

    # -- Store -------------------------------------------------------------------------------

    def get(self, key: str) -> Deferred[bytes | None]:
        entry = self._live(check_key(key))
        return self._later(entry.value if entry is not None else None)

    def set(self, key: str, value: bytes, ttl: float | None) -> Deferred[None]:
        self._put(check_key(key), check_value(value), ttl)
        return self._later(None)

    def add(self, key: str, value: bytes, ttl: float | None) -> Deferred[bool]:
        check_key(key), check_value(value)
        if ttl is not None:
            check_ttl(ttl)
        if self._live(key) is not None:
            return self._later(False)
        self._put(key, value, ttl)
        return self._later(True)

    def take(self, key: str) -> Deferred[bytes | None]:
        entry = self._live(check_key(key))
        if entry is not None:
            del self._entries[key]
        return self._later(entry.value if entry is not None else None)

    def delete(self, key: str) -> Deferred[bool]:
        entry = self._live(check_key(key))
        if entry is not None:
            del self._entries[key]
        return self._later(entry is not None)

    def delete_if(self, key: str, value: bytes) -> Deferred[bool]:
        check_value(value)
        entry = self._live(check_key(key))
        held = entry is not None and entry.value == value
        if held:
            del self._entries[key]
        return self._later(held)

    def expire(self, key: str, ttl: float) -> Deferred[bool]:
        seconds = check_ttl(ttl)
        entry = self._live(check_key(key))
        if entry is not None:
            self._expire(key, entry, seconds)
        self._sweep()
        return self._later(entry is not None)

    def expire_if(self, key: str, value: bytes, ttl: float) -> Deferred[bool]:
        seconds = check_ttl(ttl)
        check_value(value)
        entry = self._live(check_key(key))
        held = entry is not None and entry.value == value
        if entry is not None and held:
            self._expire(key, entry, seconds)
        self._sweep()
        return self._later(held)

    def scan(self, prefix: str) -> Deferred[list[str]]:
        if not isinstance(prefix, str):
            raise TypeError(f"a key prefix is a str, not {type(prefix).__name__}")
        now = self._clock.seconds()
        keys = sorted(
            key
            for key, entry in self._entries.items()
            if key.startswith(prefix) and (entry.expires_at is None or now < entry.expires_at)
        )
        return self._later(keys)

    # -- expiry ------------------------------------------------------------------------------

    def _live(self, key: str) -> _Entry | None:
        """KEY's entry if it has not expired; an expired one is removed on the way."""
        entry = self._entries.get(key)
        if entry is not None and self._expired(entry):
            del self._entries[key]
            return None
        return entry

    def _expired(self, entry: _Entry) -> bool:
        # Gone once its TTL has passed: at exactly set time + TTL it reads as absent.
        return entry.expires_at is not None and self._clock.seconds() >= entry.expires_at

    def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        seconds = check_ttl(ttl) if ttl is not None else None
        entry = self._entries[key] = _Entry(value, None)
        if seconds is not None:
            self._expire(key, entry, seconds)
        self._sweep()

    def _expire(self, key: str, entry: _Entry, seconds: float) -> None:
        entry.expires_at = self._clock.seconds() + seconds
        entry.stamp = next(self._stamps)
        heapq.heappush(self._expiries, (entry.expires_at, entry.stamp, key))
        if len(self._expiries) > _HEAP_SLACK * len(self._entries) + 64:
            self._rebuild_expiries()

    def _sweep(self) -> None:
        """Remove every entry whose TTL has passed (each heap item is popped once, in order)."""
        now = self._clock.seconds()
        while self._expiries and self._expiries[0][0] <= now:
            _, stamp, key = heapq.heappop(self._expiries)
            entry = self._entries.get(key)
            if entry is not None and entry.stamp == stamp:
                del self._entries[key]

    def _rebuild_expiries(self) -> None:
        self._expiries = [
            (entry.expires_at, entry.stamp, key)
            for key, entry in self._entries.items()
            if entry.expires_at is not None
        ]
        heapq.heapify(self._expiries)

    # -- answers -----------------------------------------------------------------------------

    def _later(self, result: T) -> Deferred[T]:
        """RESULT on a later turn, as a network store would answer; cancelling drops it.

        All the answers of one turn go out together from one delayed call, in the order
        their operations were issued: a relay refreshing 10 000 registry entries schedules
        one call, not 10 000.
        """
        d: Deferred[T] = Deferred(_drop_answer)
        self._answers.append((d, result))
        if self._answering is None:
            self._answering = self._clock.callLater(0, self._answer)
        return d

    def _answer(self) -> None:
        answers, self._answers = self._answers, []
        self._answering = None
        for d, result in answers:
            if not d.called:  # cancelled meanwhile
                d.callback(result)


def _drop_answer(d: Deferred[Any]) -> None:
    """Cancelling an answer: it errbacks with CancelledError now and is skipped later."""
