"""A slowloris flood in one lean process: COUNT connections kept open, each dripping a byte.

    python bench/_slowloris.py PORT COUNT ADDRESSES DRIP [idle]

Each of COUNT connections comes from one of ADDRESSES loopback source addresses
(127.0.1.1, 127.0.1.2, ...), sends ``SLOW_REQUEST`` one byte every DRIP seconds and never
finishes it; one the relay closes (or refuses) is opened again ``REOPEN`` seconds later, so
the flood stays at COUNT for as long as it runs. The connections are started 500 a second,
like a flood ramping up.

Why a process of its own, on raw sockets and one epoll loop: the attacker shares the
bench's two cores with the relay and the honest links, and what it spends there is taken
from them, though a real attacker spends it on its own machines. An asyncio task and
stream per connection cost ~35 % of a core for this flood; this loop does the same
connects, drips and reopens for a fraction of it, so the hostile run measures what the
relay's handling of the flood costs the honest links rather than what the attacker's
runtime costs them. The bench reports this process's CPU beside the figures.

With ``idle``, the process runs at the idle scheduling class (SCHED_IDLE): it gets a core
whenever one is free, so on a machine that is not saturated the flood keeps its strength
(the bench shows the connections it held and how often it reconnected), but it never takes
a core from the honest processes, as a remote attacker would not. Without it, the flood's
~1 000 wake-ups a second preempt them on the two shared cores.

A JSON line on stdout every second, and a last one on SIGTERM: connections open now, the
peak, opened in all, closed by the relay (with their lifetimes), connects that failed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import signal
import socket
import statistics
import sys
import time
from collections import deque

#: what a hostile connection sends, one byte at a time, never finishing the headers
SLOW_REQUEST = (
    b"GET /agent/bench HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Padding: " + b"a" * 4000
)
#: seconds before a connection the relay closed is opened again
REOPEN = 1.0
#: seconds a connect may take before it counts as failed
CONNECT_TIMEOUT = 10.0
#: new connections a second while the flood ramps up
RAMP_RATE = 500.0


class Flood:
    """COUNT slow connections on one selector; timers are FIFO queues (one delay each)."""

    def __init__(self, port: int, count: int, addresses: int, drip: float) -> None:
        self.port = port
        self.count = count
        self.addresses = addresses
        self.drip = drip
        self.sel = selectors.EpollSelector()
        self.socks: list[socket.socket | None] = [None] * count
        self.connecting = [False] * count
        self.sent = [0] * count
        self.born = [0.0] * count
        #: bumped whenever slot i's socket is closed: timers of an older one are stale
        self.gen = [0] * count
        # (due, slot, generation), each queue in the order its entries fall due
        self.opens: deque[tuple[float, int, int]] = deque()
        self.drips: deque[tuple[float, int, int]] = deque()
        self.timeouts: deque[tuple[float, int, int]] = deque()
        self.open = self.peak = self.opened = self.closed_by_relay = self.connect_failed = 0
        self.errors: dict[str, int] = {}
        self.lifetimes: list[float] = []
        self.stopping = False

    # -- one connection --------------------------------------------------------------------

    def connect(self, i: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((f"127.0.1.{i % self.addresses + 1}", 0))
            err = s.connect_ex(("127.0.0.1", self.port))
        except OSError as e:
            s.close()
            self.failed(i, e.errno)
            return
        if err not in (0, errno.EINPROGRESS):
            s.close()
            self.failed(i, err)
            return
        self.socks[i] = s
        self.connecting[i] = True
        self.sel.register(s, selectors.EVENT_WRITE, i)
        self.timeouts.append((time.monotonic() + CONNECT_TIMEOUT, i, self.gen[i]))

    def failed(self, i: int, err: int | None) -> None:
        self.connect_failed += 1
        name = errno.errorcode.get(err or 0, str(err))
        self.errors[name] = self.errors.get(name, 0) + 1
        self.opens.append((time.monotonic() + REOPEN, i, self.gen[i]))

    def connected(self, i: int, s: socket.socket) -> None:
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.drop(i)
            self.failed(i, err)
            return
        self.connecting[i] = False
        self.sel.modify(s, selectors.EVENT_READ, i)
        self.opened += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        self.born[i] = time.monotonic()
        self.sent[i] = 0
        self.send_byte(i, s)

    def send_byte(self, i: int, s: socket.socket) -> None:
        n = self.sent[i]
        if n == len(SLOW_REQUEST):  # never, at a byte a second; treat it as closed
            self.closed(i)
            return
        try:
            s.send(SLOW_REQUEST[n : n + 1])
        except OSError:
            self.closed(i)
            return
        self.sent[i] = n + 1
        self.drips.append((time.monotonic() + self.drip, i, self.gen[i]))

    def closed(self, i: int) -> None:
        """The relay answered (an error), closed or reset connection I: open it again soon."""
        self.open -= 1
        self.closed_by_relay += 1
        self.lifetimes.append(time.monotonic() - self.born[i])
        self.drop(i)
        self.opens.append((time.monotonic() + REOPEN, i, self.gen[i]))

    def drop(self, i: int) -> None:
        s = self.socks[i]
        if s is not None:
            self.sel.unregister(s)
            # RST, as the bench's asyncio attacker did (transport.abort).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
            self.socks[i] = None
        self.gen[i] += 1

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        parent = os.getppid()
        start = time.monotonic()
        ramped = 0  # connections started so far (the ramp is not in `opens`: not FIFO with it)
        next_status = start + 1.0
        while not self.stopping:
            now = time.monotonic()
            while ramped < self.count and start + ramped / RAMP_RATE <= now:
                self.connect(ramped)
                ramped += 1
            due = min(
                [q[0][0] for q in (self.opens, self.drips, self.timeouts) if q]
                + [next_status]
                + ([start + ramped / RAMP_RATE] if ramped < self.count else [])
            )
            for key, _events in self.sel.select(max(0.0, due - now)):
                i = key.data
                s = self.socks[i]
                if s is None:
                    continue
                if self.connecting[i]:
                    self.connected(i, s)
                    continue
                with contextlib.suppress(OSError):
                    s.recv(65536)  # an answer (an error), EOF or a reset: all end it
                self.closed(i)
            now = time.monotonic()
            self._fire(self.opens, now, self._reopen)
            self._fire(self.drips, now, self._drip)
            self._fire(self.timeouts, now, self._timed_out)
            if now >= next_status:
                self.status()
                next_status = now + 1.0
                if os.getppid() != parent:
                    # Orphaned (the bench died without stopping us): a flood left running
                    # would go on knocking at whatever listens on that port next.
                    self.stopping = True

    def _fire(self, queue: deque[tuple[float, int, int]], now: float, action: object) -> None:
        while queue and queue[0][0] <= now:
            _, i, gen = queue.popleft()
            if gen == self.gen[i]:
                action(i)  # type: ignore[operator]

    def _reopen(self, i: int) -> None:
        if self.socks[i] is None:
            self.connect(i)

    def _drip(self, i: int) -> None:
        s = self.socks[i]
        if s is not None and not self.connecting[i]:
            self.send_byte(i, s)

    def _timed_out(self, i: int) -> None:
        if self.connecting[i]:
            self.drop(i)
            self.connecting[i] = False
            self.failed(i, errno.ETIMEDOUT)

    def status(self, final: bool = False) -> None:
        """Print the figures (the lifetimes' median only at the end: it sorts them all)."""
        lifetimes = self.lifetimes if final else []
        print(
            json.dumps(
                {
                    "open": self.open,
                    "peak_open": self.peak,
                    "opened": self.opened,
                    "closed_by_relay": self.closed_by_relay,
                    "connect_failed": self.connect_failed,
                    "errors": self.errors,
                    "lifetime_p50_s": statistics.median(lifetimes) if lifetimes else None,
                    "lifetime_max_s": max(lifetimes) if lifetimes else None,
                }
            ),
            flush=True,
        )


def main(argv: list[str]) -> int:
    port, count, addresses, drip = int(argv[0]), int(argv[1]), int(argv[2]), float(argv[3])
    if argv[4:5] == ["idle"]:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    flood = Flood(port, count, addresses, drip)

    def stop(signum: int, frame: object) -> None:
        flood.stopping = True

    signal.signal(signal.SIGTERM, stop)
    flood.run()
    flood.status(final=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
