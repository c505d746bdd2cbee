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
still let completed connects fill its queue, and then the ones in flight wait their second.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

#: Connects to one service in flight at once: below the smallest common backlog but one
#: (asyncio's 100, Tornado's 128, and Python's ``listen()`` default of 128).
DEFAULT_CONNECTS_IN_FLIGHT = 32


class _Queued:
    """A connect waiting for its turn: the caller's Deferred, and the connect once started."""

    __slots__ = ("factory", "started", "waiter")

    def __init__(self, factory: IProtocolFactory) -> None:
        self.factory = factory
        self.started: Deferred[IProtocol] | None = None
        self.waiter: Deferred[IProtocol] = Deferred(self._cancel)

    def _cancel(self, waiter: Deferred[IProtocol]) -> None:
        if self.started is not None:
            self.started.cancel()


@implementer(IStreamClientEndpoint)
class PacedEndpoint:
    """``endpoint``, with at most ``limit`` of its connects in flight; the others wait in turn.

    Cancelling a connect still waiting takes it out of the queue; cancelling one under way
    cancels it below (an endpoint that cannot cancel may still connect: the caller must
    expect that, as it must of any endpoint).
    """

    def __init__(self, endpoint: IStreamClientEndpoint, limit: int = DEFAULT_CONNECTS_IN_FLIGHT):
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.endpoint = endpoint
        self.limit = limit
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
        if self.in_flight < self.limit and not self._waiting:
            return self._start(protocolFactory)
        queued = _Queued(protocolFactory)
        queued.waiter.addErrback(self._forget, queued)
        self._waiting.append(queued)
        return queued.waiter

    def _start(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.in_flight += 1
        d = self.endpoint.connect(factory)
        d.addBoth(self._done)
        return d

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
                queued = self._waiting.popleft()
                queued.started = self._start(queued.factory)
                queued.started.addBoth(_hand_over, queued.waiter)
        finally:
            self._starting = False
        return result

    def _forget(self, failure: Failure, queued: _Queued) -> Failure:
        """A waiting connect was cancelled: it leaves the queue (once started, it left it)."""
        if queued.started is None and queued in self._waiting:
            self._waiting.remove(queued)
        return failure


def _hand_over(result: Any, waiter: Deferred[IProtocol]) -> None:
    """Give a connect's outcome to whoever waited for it, unless they gave up meanwhile (a
    connection made anyway is the caller's to drop, as for any endpoint that cannot cancel)."""
    if waiter.called:
        return
    if isinstance(result, Failure):
        waiter.errback(result)
    else:
        waiter.callback(result)
