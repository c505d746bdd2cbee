"""OneShotObserver: each waiter its own Deferred, all fired with one result on a later turn."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from nbbridge.mux._observer import OneShotObserver


class OneShotObserverTests(TestCase):
    def test_waiters_fire_on_a_later_turn(self) -> None:
        clock = Clock()
        observer: OneShotObserver[str] = OneShotObserver(clock)
        first, second = observer.when_fired(), observer.when_fired()
        self.assertIsNot(first, second)
        observer.fire("done")
        self.assertNoResult(first)
        clock.advance(0)
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), ("done",) * 2)

    def test_late_waiter_also_waits_a_turn(self) -> None:
        clock = Clock()
        observer: OneShotObserver[int] = OneShotObserver(clock)
        observer.fire(1)
        observer.fire(2)  # ignored: one shot
        late = observer.when_fired()
        self.assertNoResult(late)
        clock.advance(0)
        self.assertEqual(self.successResultOf(late), 1)
        self.assertTrue(observer.fired)

    def test_a_waiter_that_fails_does_not_stop_the_others(self) -> None:
        clock = Clock()
        observer: OneShotObserver[str] = OneShotObserver(clock)
        bad = observer.when_fired()
        bad.addCallback(lambda _: 1 / 0)
        good = observer.when_fired()
        observer.fire("x")
        clock.advance(0)
        self.assertEqual(self.successResultOf(good), "x")
        self.failureResultOf(bad, ZeroDivisionError)
