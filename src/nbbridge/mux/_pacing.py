"""Connects to one service, a bounded number at a time, so that a burst of opens does not
flood its listen queue.

A service listens with its framework's backlog: 100 for an asyncio server, 128 for Tornado
(Jupyter), 5 for ``socketserver``. When more connects reach it at once than its accept queue
holds, Linux drops the SYNs beyond it (TcpExt ListenOverflows) and each dropped connect is
retried only after the SYN timeout, a whole second. A user who opens 1000 connections at
once through the tunnel makes the agent connect 1000 times within a few milliseconds, which
a direct client rarely does; 1000 connections to an asyncio echo (backlog 100) then took
1.2-3.2 s, against 1.0-1.8 s to the same echo with a backlog of 4096 (bench/burst.py). So
the agent connects to each service at most ``limit`` at a time and queues the rest in
order. A queued connect still counts as an open in progress, so the session's pending-open
limit refuses what lies beyond it, as before.

What this bounds is the connects in flight, not the connections the service has yet to
accept: a service that stops accepting for a while (descheduled on a loaded machine) can
still let completed connects fill its queue, and then every connect in flight loses its SYN
and waits its second, holding its slot, so the whole burst stalls (bench/burst.py on a
quiet machine: 3 rounds of 7 took 1.3 s instead of 0.3 s, each with exactly 32 SYNs
dropped). For a service on this machine, a connect takes microseconds unless its SYN was
dropped, so ``retry_after`` restarts one still under way after 0.2 s, then 0.4 s, then
0.8 s (a fresh socket sends its SYN at once, where the kernel would wait a second), and
lets the last run its course. Cancelled while its SYN is unanswered, a connect leaves
nothing at the service; one the kernel completed while the reactor was busy past its time
is seen by the reactor's next poll, which comes before the restart (``_due``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

#: Connects to one service in flight at once: below the smallest common backlog but one
#: (asyncio's 100, Tornado's 128, and Python's ``listen()`` default of 128).
DEFAULT_CONNECTS_IN_FLIGHT = 32
#: Seconds after which a connect to a service on this machine is restarted, doubling each
#: time; the kernel's own first SYN retransmission comes after 1 s.
LOOPBACK_RETRIES = (0.2, 0.4, 0.8)
#: Seconds a connect under way whose caller gave up may still run (see ``_Queued._cancel``):
#: past the first two SYN retransmissions (1 s, then 2 s more) to a service slow to accept.
GIVE_UP_GRACE = 5.0


class _Queued:
    """A connect: the caller's Deferred, and the connect below once started."""

    __slots__ = ("clock", "factory", "started", "waiter")

    def __init__(self, factory: IProtocolFactory, clock: IReactorTime) -> None:
        self.factory = factory
        self.clock = clock
        self.started: Deferred[IProtocol] | None = None
        self.waiter: Deferred[IProtocol] = Deferred(self._cancel)

    def _cancel(self, waiter: Deferred[IProtocol]) -> None:
        """The caller gave up (its Deferred fails at once with CancelledError).

        A connect still waiting never starts (``PacedEndpoint._forget``). One under way is
        not cancelled at once: a TCP connect cancelled closes its socket in order, and when
        the kernel had completed the handshake already (within ``connect(2)`` itself, on
        loopback) and the reactor had not yet seen it, the service got a connection that
        opened and ended with a clean FIN, as if a user had connected and left, while the
        user's request was lost with the fault. So it is left to finish, and the connection
        it makes is the caller's to drop (the agent's session resets it as it joins its lost
        channel); only one still under way after ``GIVE_UP_GRACE`` (a service that does not
        answer) is cancelled. Until it ends it keeps its slot.
        """
        started = self.started
        if started is None or started.called:
            return
        timer = self.clock.callLater(GIVE_UP_GRACE, started.cancel)
        started.addBoth(_stop_timer, timer)


@implementer(IStreamClientEndpoint)
class PacedEndpoint:
    """``endpoint``, with at most ``limit`` of its connects in flight; the others wait in turn.

    Cancelling a connect still waiting takes it out of the queue; cancelling one under way
    lets it finish (cancelled below only after ``GIVE_UP_GRACE``, see ``_Queued._cancel``):
    the connection it makes anyway is the caller's to drop, as it must expect of any
    endpoint that cannot cancel.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        limit: int = DEFAULT_CONNECTS_IN_FLIGHT,
        clock: IReactorTime | None = None,
        retry_after: Sequence[float] = (),
    ):
        """RETRY_AFTER: seconds after which a connect still under way is cancelled and made
        again, one entry per restart (``LOOPBACK_RETRIES`` for a service on this machine;
        none for a remote one, whose round trip may be longer than any of them)."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if clock is None:
            from twisted.internet import reactor as clock
        assert clock is not None
        self._clock = clock
        self.endpoint = endpoint
        self.limit = limit
        self.retry_after = tuple(retry_after)
        #: connects cancelled under way and made again (``retry_after``)
        self.restarts = 0
        self.in_flight = 0
        self._waiting: deque[_Queued] = deque()
        #: the loop of _done is starting queued connects: a nested _done leaves it to it
        self._starting = False

    def __repr__(self) -> str:
        return f"<PacedEndpoint {self.endpoint!r}, {self.limit} at a time>"

    @property
    def waiting(self) -> int:
        """Connects queued behind the ones in flight."""
        return len(self._waiting)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        queued = _Queued(protocolFactory, self._clock)
        queued.waiter.addErrback(self._forget, queued)
        if self.in_flight < self.limit and not self._waiting:
            self._start(queued)
        else:
            self._waiting.append(queued)
        return queued.waiter

    def _start(self, queued: _Queued) -> None:
        self.in_flight += 1
        self._attempt(queued, 0)

    def _attempt(self, queued: _Queued, tries: int) -> None:
        """Make QUEUED's connect (attempt TRIES + 1), to be restarted while retries remain.

        An endpoint that raises (rather than return a failed Deferred) fails the connect like
        any other failure: raised through here, it kept its slot for good."""
        queued.started = d = maybeDeferred(self.endpoint.connect, queued.factory)
        if tries < len(self.retry_after) and not d.called:
            timer = self._clock.callLater(self.retry_after[tries], self._due, queued, d, tries)
            d.addBoth(_stop_timer, timer)
        d.addBoth(self._ended, queued, d)

    def _due(self, queued: _Queued, d: Deferred[IProtocol], tries: int) -> None:
        """D's time is up: it is restarted after the reactor has polled once more.

        The reactor runs its due timers before it polls: when it was busy past D's time (a
        burst of opens on a loaded machine), the kernel may have completed D meanwhile, and
        cancelling it then would close a made connection (the service reads a FIN, and the
        connection sits in the accept queue that is already short of room). A call made
        from a timer runs only after the next poll, which sees such a connect completed.
        """
        last_look = self._clock.callLater(0, self._restart, queued, d, tries)
        d.addBoth(_stop_timer, last_look)

    def _restart(self, queued: _Queued, d: Deferred[IProtocol], tries: int) -> None:
        """D is still under way after its time and one more poll: its SYN was dropped. Make
        it again (its socket closed first: a burst may be near the limit of open files)."""
        if queued.waiter.called:
            return  # given up meanwhile: left to finish (see _Queued._cancel)
        self.restarts += 1
        queued.started = None  # D's end, its cancellation, is no longer QUEUED's
        d.cancel()
        self._attempt(queued, tries + 1)

    def _ended(self, result: Any, queued: _Queued, d: Deferred[IProtocol]) -> Any:
        """Attempt D ended. Unless a restart replaced it (then it was cancelled: nothing to
        say), its outcome is QUEUED's."""
        if queued.started is not d:
            return None
        self._done(None)
        _hand_over(result, queued.waiter)
        return None

    def _done(self, result: Any) -> Any:
        """A connect ended: its slot goes to the next in line.

        A connect may end as it starts (an endpoint that fails at once, such as a channel
        open on a closed session), calling this again from inside the loop: that call only
        frees its slot, and the loop already running fills it. Each nested call used to run
        its own loop, one level deeper per queued connect, until the stack overflowed.
        """
        self.in_flight -= 1
        if self._starting:
            return result
        self._starting = True
        try:
            while self._waiting and self.in_flight < self.limit:
                self._start(self._waiting.popleft())
        finally:
            self._starting = False
        return result

    def _forget(self, failure: Failure, queued: _Queued) -> Failure:
        """A waiting connect was cancelled: it leaves the queue (once started, it left it)."""
        if queued.started is None and queued in self._waiting:
            self._waiting.remove(queued)
        return failure


def _stop_timer(result: Any, timer: IDelayedCall) -> Any:
    """A callback: TIMER is no longer needed once the Deferred fired; RESULT passes on."""
    if timer.active():
        timer.cancel()
    return result


def _hand_over(result: Any, waiter: Deferred[IProtocol]) -> None:
    """Give a connect's outcome to whoever waited for it, unless they gave up meanwhile (a
    connection made anyway is the caller's to drop, as for any endpoint that cannot cancel)."""
    if waiter.called:
        return
    if isinstance(result, Failure):
        waiter.errback(result)
    else:
        waiter.callback(result)
