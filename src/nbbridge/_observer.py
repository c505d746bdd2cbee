"""Waiting for an event: each waiter its own fresh Deferred, fired on a later reactor turn.

Several objects hand out "tell me when X happens" Deferreds (a port bound, a link up, every
connection closed). Doing that by hand means a list of Deferreds, a loop that fires them, and
care that a callback which re-enters the object does not find it half-updated. These two
classes do it once: a waiter never runs inside the code that fired it (`clock.callLater(0)`),
and cancelling a waiter forgets it.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

T = TypeVar("T")


class Waiters(Generic[T]):
    """Everyone waiting for the next time something happens (it may happen again later)."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._waiting: list[Deferred[T]] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def wait(self) -> Deferred[T]:
        """A new Deferred for the next `fire`; cancelling it forgets it."""
        d: Deferred[T] = Deferred(self._forget)
        self._waiting.append(d)
        return d

    def _forget(self, d: Deferred[T]) -> None:
        if d in self._waiting:
            self._waiting.remove(d)

    def fire(self, result: T | Failure) -> None:
        """Give RESULT (a value or a Failure) to everyone waiting now, each on a later turn."""
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            self._clock.callLater(0, _settle, d, result)


class OneShotObserver(Generic[T]):
    """Something that happens once; whoever asks, before or after, gets its result."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._waiters: Waiters[T] = Waiters(clock)
        self._result: T | Failure | None = None
        self._fired = False

    @property
    def fired(self) -> bool:
        return self._fired

    def when_fired(self) -> Deferred[T]:
        """A new Deferred with the result, fired on a later turn (at once if already known)."""
        if not self._fired:
            return self._waiters.wait()
        d: Deferred[T] = Deferred()
        self._clock.callLater(0, _settle, d, self._result)
        return d

    def fire(self, result: T | Failure) -> None:
        """Settle with RESULT; later calls are ignored (the first outcome stands)."""
        if self._fired:
            return
        self._fired = True
        self._result = result
        self._waiters.fire(result)


def _settle(d: Deferred[T], result: T | Failure) -> None:
    if d.called:  # cancelled meanwhile
        return
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)
