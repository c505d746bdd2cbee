"""ConnectionTracker's counts of unfinished handshakes stay true on every path.

`_holds_its_share` compares an address's count with the mean over the addresses holding
any (`_limited_handshakes` over `len(_handshakes_by_ip)`), so a count left behind by one
path (an eviction, an upgrade, a refusal, a connection lost) would refuse an address for
good or let a flood through. A seeded random walk over those paths, from IPv4, IPv6 and
exempt addresses, checks the counts against the connections themselves after each step.
"""

from __future__ import annotations

import random
from collections import Counter

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nbbridge.websocket._guard import ConnectionLimits
from nbbridge.websocket._tracking import ConnectionTracker, TrackedConnection

_ADDRESSES = [
    IPv4Address("TCP", "192.0.2.1", 1),
    IPv4Address("TCP", "192.0.2.2", 1),
    IPv4Address("TCP", "127.0.0.1", 1),  # exempt
    IPv6Address("TCP", "2001:db8::1", 1),
    IPv6Address("TCP", "2001:db8::2", 1),
    IPv6Address("TCP", "::1", 1),  # exempt
]


class CountTests(SynchronousTestCase):
    def test_counts_match_the_connections_on_every_path(self) -> None:
        clock = Clock()
        limits = ConnectionLimits(
            handshake_timeout=5, handshakes_per_ip=3, handshakes_total=6, connections_per_ip=5
        )
        tracker = ConnectionTracker(Factory.forProtocol(Protocol), clock, limits)
        rng = random.Random(1)
        open_: list[TrackedConnection] = []
        refused_at_accept = evicted = 0

        def check(step: int) -> None:
            unfinished = [p for p in open_ if p.handshaking]
            limited = Counter(p.peer_ip for p in unfinished if p.peer_ip not in limits.exempt)
            self.assertEqual(tracker._handshakes_by_ip, limited, step)
            self.assertEqual(tracker._limited_handshakes, limited.total(), step)
            self.assertEqual(tracker.handshakes, len(unfinished), step)
            self.assertEqual(list(tracker._unfinished), unfinished, step)
            self.assertLessEqual(tracker.handshakes, limits.handshakes_total, step)

        for step in range(3000):
            action = rng.choice(["connect"] * 3 + ["upgrade", "lose", "junk", "wait"])
            if action == "connect":
                address = rng.choice(_ADDRESSES)
                before = len(tracker._unfinished)
                p = tracker.buildProtocol(address)
                if not isinstance(p, TrackedConnection):
                    refused_at_accept += 1
                    continue
                p.makeConnection(StringTransport(peerAddress=address))
                open_.append(p)
                evicted += before >= limits.handshakes_total
            elif action == "wait":
                clock.advance(rng.choice([0.5, 2.0]))  # deadlines pass (408), lingers end
            elif open_:
                p = rng.choice(open_)
                if action == "upgrade":
                    p.upgraded()
                elif action == "junk":
                    p.dataReceived(b"\x16\x03\x01")  # a TLS ClientHello: 400 at once
                else:
                    open_.remove(p)
                    p.connectionLost(Failure(ConnectionDone()))
            check(step)
        # The walk went down every path it is meant to check.
        self.assertGreater(refused_at_accept, 50)
        self.assertGreater(evicted, 50)
        self.assertGreater(tracker.refusals.counts["handshakes_total"], 50)
        for p in list(open_):
            p.connectionLost(Failure(ConnectionDone()))
        open_.clear()
        check(-1)
        self.assertEqual((tracker.handshakes, tracker._limited_handshakes), (0, 0))
