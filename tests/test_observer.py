"""Waiters and OneShotObserver: fresh Deferreds, fired on a later turn, cancellable."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nbbridge._observer import OneShotObserver, Waiters


class WaitersTests(SynchronousTestCase):
    def test_fired_on_a_later_turn(self) -> None:
        clock = Clock()
        waiters: Waiters[str] = Waiters(clock)
        first, second = waiters.wait(), waiters.wait()
        waiters.fire("up")
        self.assertNoResult(first)  # never inside the code that fired
        clock.advance(0)
        self.assertEqual(self.successResultOf(first), "up")
        self.assertEqual(self.successResultOf(second), "up")

    def test_only_those_waiting_now(self) -> None:
        clock = Clock()
        waiters: Waiters[str] = Waiters(clock)
        early = waiters.wait()
        waiters.fire("one")
        late = waiters.wait()
        clock.advance(0)
        self.assertEqual(self.successResultOf(early), "one")
        self.assertNoResult(late)
        self.assertEqual(len(waiters), 1)

    def test_cancel_forgets(self) -> None:
        clock = Clock()
        waiters: Waiters[str] = Waiters(clock)
        d = waiters.wait()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(waiters), 0)
        # Cancelled between fire and the later turn: nothing fires twice.
        d = waiters.wait()
        waiters.fire("x")
        d.cancel()
        clock.advance(0)
        self.failureResultOf(d, CancelledError)

    def test_failure(self) -> None:
        clock = Clock()
        waiters: Waiters[str] = Waiters(clock)
        d = waiters.wait()
        waiters.fire(Failure(ValueError("down")))
        clock.advance(0)
        self.assertEqual(str(self.failureResultOf(d, ValueError).value), "down")


class OneShotObserverTests(SynchronousTestCase):
    def test_before_and_after(self) -> None:
        clock = Clock()
        observer: OneShotObserver[int] = OneShotObserver(clock)
        before = observer.when_fired()
        observer.fire(7)
        observer.fire(8)  # the first outcome stands
        after = observer.when_fired()
        self.assertTrue(observer.fired)
        self.assertNoResult(after)
        clock.advance(0)
        self.assertEqual(self.successResultOf(before), 7)
        self.assertEqual(self.successResultOf(after), 7)

    def test_failure_for_everyone(self) -> None:
        clock = Clock()
        observer: OneShotObserver[int] = OneShotObserver(clock)
        before = observer.when_fired()
        observer.fire(Failure(OSError("no port")))
        after = observer.when_fired()
        clock.advance(0)
        self.failureResultOf(before, OSError)
        self.failureResultOf(after, OSError)
