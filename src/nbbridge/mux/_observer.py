"""OneShotObserver: any number of waiters for one outcome, each with a Deferred of its own.

A waiter's callbacks run on a later reactor turn, never inside the call that produced the
outcome (nor inside ``when_fired`` when the outcome is already known): code that fires the
observer in the middle of its own bookkeeping (a session tearing down its channels) is not
re-entered by whoever waited, and a waiter sees the same ordering whether it asked before or
after the outcome.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

T = TypeVar("T")


class OneShotObserver(Generic[T]):
    """Remembers one result and hands it to every waiter, each on a later turn.

    :param clock: schedules the firing; None looks up the global reactor when first needed
        (for objects built outside ``makeService``, as tests and benchmarks do).
    """

    def __init__(self, clock: IReactorTime | None = None) -> None:
        self._clock = clock
        self._waiters: list[Deferred[T]] = []
        self._fired = False
        self._result: T | None = None

    @property
    def fired(self) -> bool:
        return self._fired

    def when_fired(self) -> Deferred[T]:
        """A new Deferred that fires with the result (on a later turn than this call)."""
        d: Deferred[T] = Deferred()
        if self._fired:
            self._later(d)
        else:
            self._waiters.append(d)
        return d

    def fire(self, result: T) -> None:
        """Settle the result and fire every waiter on a later turn; later calls are ignored."""
        if self._fired:
            return
        self._fired = True
        self._result = result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._later(d)

    def _later(self, d: Deferred[T]) -> None:
        clock = self._clock
        if clock is None:
            from twisted.internet import reactor

            clock = self._clock = reactor
        assert clock is not None
        clock.callLater(0, d.callback, self._result)
