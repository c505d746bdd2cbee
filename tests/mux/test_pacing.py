"""PacedEndpoint: at most N connects to a service in flight; the rest wait in order."""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nbbridge.mux import (
    ChannelEndpoint,
    MuxSession,
    PacedEndpoint,
    ServiceMap,
    SessionClosed,
    TooManyChannels,
)
from nbbridge.mux._pacing import GIVE_UP_GRACE, LOOPBACK_RETRIES
from tests._cleanup import add_async_cleanup
from tests._loopback import listen, serve

from ._helpers import session_pair, tcp_endpoint


class _Named(Factory):
    def __init__(self, name: str) -> None:
        self.name = name


class ManualEndpoint:
    """Records each connect; the test completes (``finish``), fails or cancels it."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, Deferred[IProtocol]]] = []
        self.factories: list[Factory] = []
        self.cancelled: list[str] = []
        #: for each connect, how many had been cancelled when it was made
        self.cancelled_before: list[int] = []

    def connect(self, factory: Factory) -> Deferred[IProtocol]:
        name = getattr(factory, "name", str(len(self.connects)))
        self.cancelled_before.append(len(self.cancelled))
        d: Deferred[IProtocol] = Deferred(lambda d: self.cancelled.append(name))
        self.connects.append((name, d))
        self.factories.append(factory)
        return d

    def finish(self, i: int) -> None:
        """Connect number I succeeds: its protocol gets a transport."""
        protocol = self.factories[i].buildProtocol(None)
        assert protocol is not None
        protocol.makeConnection(StringTransport())
        self.connects[i][1].callback(protocol)

    @property
    def started(self) -> list[str]:
        return [name for name, _ in self.connects]


class RaisingEndpoint(ManualEndpoint):
    """Its connects from number ``raise_from`` on raise (as if out of file descriptors)."""

    raise_from = 0

    def connect(self, factory: Factory) -> Deferred[IProtocol]:
        if len(self.connects) >= self.raise_from:
            raise OSError(24, "Too many open files")
        return super().connect(factory)


class PacedEndpointTests(SynchronousTestCase):
    def test_at_most_limit_in_flight_the_rest_in_order(self) -> None:
        below = ManualEndpoint()
        paced = PacedEndpoint(below, limit=2)  # type: ignore[arg-type]
        results = [paced.connect(_Named(str(i))) for i in range(5)]
        self.assertEqual(below.started, ["0", "1"])
        self.assertEqual((paced.in_flight, paced.waiting), (2, 3))
        below.connects[1][1].callback(Protocol())  # one done: the next in line starts
        self.assertEqual(below.started, ["0", "1", "2"])
        below.connects[0][1].errback(ConnectionRefusedError())  # a failure frees a slot too
        self.assertEqual(below.started, ["0", "1", "2", "3"])
        self.assertIsInstance(self.successResultOf(results[1]), Protocol)
        self.failureResultOf(results[0], ConnectionRefusedError)
        below.connects[2][1].callback(Protocol())
        below.connects[3][1].errback(ConnectionRefusedError())
        below.connects[4][1].callback(Protocol())
        self.assertIsInstance(self.successResultOf(results[2]), Protocol)
        self.failureResultOf(results[3], ConnectionRefusedError)  # the queued one's outcome
        self.assertIsInstance(self.successResultOf(results[4]), Protocol)
        self.assertEqual((paced.in_flight, paced.waiting), (0, 0))

    def test_cancel_while_waiting_leaves_the_queue(self) -> None:
        below = ManualEndpoint()
        paced = PacedEndpoint(below, limit=1)  # type: ignore[arg-type]
        first = paced.connect(_Named("first"))
        waiting = paced.connect(_Named("waiting"))
        last = paced.connect(_Named("last"))
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual(paced.waiting, 1)
        below.connects[0][1].callback(Protocol())
        self.successResultOf(first)
        self.assertEqual(below.started, ["first", "last"])  # the cancelled one never started
        self.assertNoResult(last)

    def test_cancel_once_started_lets_the_connect_finish(self) -> None:
        """Given up under way, a connect is cancelled below only after GIVE_UP_GRACE (a TCP
        connect cancelled just as the kernel completed it closes in order: the service would
        read a FIN); it keeps its slot until then."""
        below = ManualEndpoint()
        clock = Clock()
        paced = PacedEndpoint(below, limit=1, clock=clock)  # type: ignore[arg-type]
        first = paced.connect(_Named("first"))
        second = paced.connect(_Named("second"))
        below.connects[0][1].callback(Protocol())
        self.successResultOf(first)
        second.cancel()
        self.failureResultOf(second, CancelledError)
        self.assertEqual((below.cancelled, paced.in_flight), ([], 1))
        clock.advance(GIVE_UP_GRACE)
        self.assertEqual((below.cancelled, paced.in_flight), (["second"], 0))

    def test_a_given_up_connect_that_completes_frees_its_slot(self) -> None:
        """It connects anyway: the connection is its caller's to drop (its factory built the
        protocol), the slot goes to the next in line, and no cancel is left to come."""
        below = ManualEndpoint()
        clock = Clock()
        paced = PacedEndpoint(below, limit=1, clock=clock)  # type: ignore[arg-type]
        given_up = paced.connect(_Named("given up"))
        waiting = paced.connect(_Named("next"))
        given_up.cancel()
        self.failureResultOf(given_up, CancelledError)
        below.connects[0][1].callback(Protocol())
        self.assertEqual(below.started, ["given up", "next"])
        self.assertEqual((clock.getDelayedCalls(), below.cancelled), ([], []))
        self.assertNoResult(waiting)

    def test_connects_that_end_at_once_do_not_recurse(self) -> None:
        """Paced channel opens on a session that ends: each queued connect then fails as it
        starts (the session is closed), in turn, without nesting one call per connect: nested,
        300 of them overflowed the stack (200 did not), failed the rest with RecursionError
        and left a slot never freed, so every later connect to the service waited forever."""
        a, _b, pump = session_pair(ServiceMap({"s": ManualEndpoint()}))
        paced = PacedEndpoint(ChannelEndpoint.on(a, "s"), limit=1)
        results = [paced.connect(Factory.forProtocol(Protocol)) for _ in range(2000)]
        pump.flush()
        self.assertEqual((paced.in_flight, paced.waiting), (1, 1999))
        a.close("test over")
        for result in results:
            self.failureResultOf(result, SessionClosed)
        self.assertEqual((paced.in_flight, paced.waiting), (0, 0))

    def test_a_connect_still_under_way_is_made_again(self) -> None:
        """On loopback a connect under way after 0.2 s lost its SYN to a full accept queue:
        it is cancelled and made again (0.4 s, 0.8 s later again), then left to the
        kernel's own retries; its slot is held throughout, and its outcome is the last's."""
        below = ManualEndpoint()
        clock = Clock()
        paced = PacedEndpoint(below, limit=1, clock=clock, retry_after=(0.2, 0.4))  # type: ignore[arg-type]
        result = paced.connect(_Named("s"))
        queued = paced.connect(_Named("next"))
        clock.advance(0.2)
        self.assertEqual((below.started, below.cancelled), (["s", "s"], ["s"]))
        clock.advance(0.4)
        self.assertEqual((below.started, below.cancelled), (["s", "s", "s"], ["s", "s"]))
        clock.advance(10)
        self.assertEqual((len(below.started), paced.restarts, paced.in_flight), (3, 2, 1))
        self.assertNoResult(result)
        below.connects[2][1].callback(Protocol())
        self.assertIsInstance(self.successResultOf(result), Protocol)
        self.assertEqual(below.started[-1], "next")
        below.connects[3][1].callback(Protocol())
        self.successResultOf(queued)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_restart_closes_the_attempt_it_replaces_first(self) -> None:
        """The old attempt's socket is closed before the new one is made: a burst of opens
        near the limit of open files (1024 by default) would otherwise fail the new socket
        (EMFILE), and the caller would hear that, its old connect cancelled."""
        below = ManualEndpoint()
        clock = Clock()
        paced = PacedEndpoint(below, clock=clock, retry_after=(0.2, 0.4))  # type: ignore[arg-type]
        paced.connect(_Named("s"))
        clock.advance(0.2)
        clock.advance(0.4)
        self.assertEqual((below.cancelled_before, paced.restarts), ([0, 1, 2], 2))

    def test_an_endpoint_that_raises_fails_the_connect_and_frees_its_slot(self) -> None:
        """An endpoint may raise instead of returning a failed Deferred: the slot it took was
        never freed (every later connect to the service waited forever), and a restart that
        raised left its caller waiting forever too."""
        below = RaisingEndpoint()
        clock = Clock()
        paced = PacedEndpoint(below, limit=1, clock=clock, retry_after=(0.2,))  # type: ignore[arg-type]
        self.failureResultOf(paced.connect(_Named("s")), OSError)
        self.assertEqual(paced.in_flight, 0)
        below.raise_from = 1  # the first connect is under way, its restart raises
        restarted = paced.connect(_Named("s"))
        queued = paced.connect(_Named("next"))
        clock.advance(0.2)
        self.failureResultOf(restarted, OSError)
        self.failureResultOf(queued, OSError)  # it took the slot, and its connect raised
        self.assertEqual((paced.in_flight, paced.waiting, clock.getDelayedCalls()), (0, 0, []))

    def test_a_connect_done_in_time_is_not_made_again(self) -> None:
        below = ManualEndpoint()
        clock = Clock()
        paced = PacedEndpoint(below, clock=clock, retry_after=(0.2,))  # type: ignore[arg-type]
        result = paced.connect(_Named("s"))
        clock.advance(0.1)
        below.connects[0][1].callback(Protocol())
        self.successResultOf(result)
        clock.advance(1)
        self.assertEqual((below.started, below.cancelled, paced.restarts), (["s"], [], 0))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_failed_attempt_is_not_made_again(self) -> None:
        """Refused is an answer (nothing listens): the caller hears it at once."""
        below = ManualEndpoint()
        clock = Clock()
        paced = PacedEndpoint(below, clock=clock, retry_after=(0.2,))  # type: ignore[arg-type]
        result = paced.connect(_Named("s"))
        below.connects[0][1].errback(ConnectionRefusedError())
        self.failureResultOf(result, ConnectionRefusedError)
        self.assertEqual((clock.getDelayedCalls(), paced.in_flight), ([], 0))

    def test_a_given_up_connect_is_not_made_again(self) -> None:
        below = ManualEndpoint()
        clock = Clock()
        paced = PacedEndpoint(below, clock=clock, retry_after=(0.2,))  # type: ignore[arg-type]
        result = paced.connect(_Named("s"))
        result.cancel()
        self.failureResultOf(result, CancelledError)
        clock.advance(0.2)
        self.assertEqual((below.started, paced.restarts), (["s"], 0))
        clock.advance(GIVE_UP_GRACE)
        self.assertEqual((below.cancelled, paced.in_flight), (["s"], 0))

    def test_limit_must_be_positive(self) -> None:
        with self.assertRaises(ValueError):
            PacedEndpoint(ManualEndpoint(), limit=0)  # type: ignore[arg-type]


class PendingOpenLimitTests(SynchronousTestCase):
    def test_queued_connects_count_as_opens_in_progress(self) -> None:
        """Opens waiting for the pacer are opens in progress: past the session's pending-open
        limit they are refused, and the refusal names that limit."""
        below = ManualEndpoint()
        paced = PacedEndpoint(below, limit=4)  # type: ignore[arg-type]
        a, b, pump = session_pair(ServiceMap({"s": paced}), max_pending_accepts=10)
        opens = [a.open("s") for _ in range(12)]
        pump.flush()
        self.assertEqual(len(below.connects), 4)
        self.assertEqual(paced.waiting, 6)
        for refused in opens[10:]:
            failure = self.failureResultOf(refused, TooManyChannels)
            self.assertIn("pending-open limit reached: 10 opens in progress", str(failure.value))
        for i in range(4):
            below.finish(i)
        pump.flush()
        self.assertEqual(len(below.connects), 8)  # the next four started as slots came free
        self.assertEqual(len(b.channels), 4)

    def test_reset_opens_give_their_place_up(self) -> None:
        """The peer resets an open whose connect is under way (the connect finishes, its
        connection is dropped, and its slot goes to the next in line) and one still queued
        (it never starts)."""
        below = ManualEndpoint()
        paced = PacedEndpoint(below, limit=2, clock=Clock())  # type: ignore[arg-type]
        a, b, pump = session_pair(ServiceMap({"s": paced}))
        opens = [a.open("s") for _ in range(5)]  # channels 1, 3, 5, 7, 9
        pump.flush()
        self.assertEqual((below.started, paced.waiting), (["0", "1"], 3))
        for cid in (1, 7):
            opens[cid // 2].cancel()  # sends RESET
            self.failureResultOf(opens[cid // 2], CancelledError)
        pump.flush()
        # Channel 1's connect is left to finish (see PacedEndpoint), holding its slot.
        self.assertEqual((below.started, below.cancelled), (["0", "1"], []))
        self.assertEqual((paced.in_flight, paced.waiting), (2, 2))
        below.finish(0)  # its connection is aborted as it joins its reset channel
        self.assertEqual(below.started, ["0", "1", "2"])  # channel 5 took channel 1's slot
        self.assertEqual((paced.in_flight, paced.waiting), (2, 1))
        self.assertEqual(sorted(b._accepting), [3, 5, 9])
        below.finish(1)
        below.connects[2][1].callback(Protocol())
        pump.flush()
        below.finish(3)
        pump.flush()
        self.assertEqual(below.started, ["0", "1", "2", "3"])  # channel 7 never started
        self.assertEqual(sorted(b.channels), [3, 5, 9])
        self.assertEqual([self.successResultOf(opens[cid // 2]).id for cid in (3, 5, 9)], [3, 5, 9])
        self.assertEqual((paced.in_flight, paced.waiting), (0, 0))


class TimedEndpoint:
    """An endpoint that records how long each of its connects took, from its own start."""

    def __init__(self, endpoint: TCP4ClientEndpoint) -> None:
        self._endpoint = endpoint
        self.seconds: list[float] = []

    def connect(self, factory: Factory) -> Deferred[IProtocol]:
        started = reactor.seconds()  # type: ignore[attr-defined]

        def took(result: object) -> object:
            self.seconds.append(reactor.seconds() - started)  # type: ignore[attr-defined]
            return result

        return self._endpoint.connect(factory).addBoth(took)


class RealServiceTests(TestCase):
    async def test_a_burst_to_a_small_backlog_loses_no_syn(self) -> None:
        """300 opens at once to a service listening with a backlog of 8: paced, each connect
        completes as soon as it starts; unpaced, the SYNs beyond the accept queue are
        dropped and those connects take the kernel's one-second retry (the slowest took
        1.0-1.3 s unpaced when this test was written)."""
        port = await serve(
            self, "tcp:0:interface=127.0.0.1:backlog=8", Factory.forProtocol(Protocol)
        )
        timed = TimedEndpoint(tcp_endpoint(port))
        paced = PacedEndpoint(timed, limit=4)  # type: ignore[arg-type]
        agent_side: list[MuxSession] = []

        def make_agent_session() -> MuxSession:
            agent_side.append(MuxSession(initiator=False, acceptor=ServiceMap({"s": paced})))
            return agent_side[-1]

        mux_port = await listen(self, Factory.forProtocol(make_agent_session))
        client = MuxSession(initiator=True)
        await TCP4ClientEndpoint(reactor, "127.0.0.1", mux_port).connect(
            Factory.forProtocol(lambda: client)
        )

        async def close() -> None:
            ended = [client.when_closed(), *(s.when_closed() for s in agent_side)]
            client.close("test over")
            await DeferredList(ended)

        add_async_cleanup(self, close)
        results = await DeferredList([client.open("s") for _ in range(300)], consumeErrors=True)
        self.assertEqual([r for ok, r in results if not ok], [])
        self.assertEqual(len(client.channels), 300)
        self.assertEqual(len(timed.seconds), 300)
        self.assertLess(max(timed.seconds), 0.9)  # no SYN waited for its one-second retry


class StalledServiceTests(TestCase):
    async def test_a_dropped_syn_is_sent_again_without_waiting_a_second(self) -> None:
        """A service that stops accepting for a moment (here: its accept queue of 2 is full,
        then it catches up after 0.1 s) drops the SYN that arrives meanwhile; the kernel
        would send it again after one second, the paced endpoint makes the connect again
        after 0.2 s (it took 1.0 s before, the kernel's retransmission)."""
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(2):  # Linux queues backlog + 1 completed connections
            s = socket.create_connection(("127.0.0.1", port))
            self.addCleanup(s.close)
            fillers.append(s)
        timed = TimedEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        paced = PacedEndpoint(timed, retry_after=LOOPBACK_RETRIES)  # type: ignore[arg-type]
        accepted: list[socket.socket] = []

        def catch_up() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    return
                self.addCleanup(conn.close)
                accepted.append(conn)

        # The service catches up after 0.1 s: what it does, not what the test waits for.
        reactor.callLater(0.1, catch_up)  # type: ignore[attr-defined]
        protocol = await paced.connect(Factory.forProtocol(Protocol))
        self.addCleanup(protocol.transport.abortConnection)  # type: ignore[union-attr]
        self.assertLess(timed.seconds[-1], 0.9)
        self.assertEqual(paced.restarts, 1)

    async def test_a_connect_completed_as_its_time_comes_is_not_made_again(self) -> None:
        """The reactor runs its due timers before it polls its sockets: when it was busy
        past a connect's restart time (a burst of opens on a loaded machine), the kernel had
        completed the connect meanwhile, and restarting it then closed a made connection
        (the service read a FIN on a connection that opened and ended). The restart waits
        for one more poll. Here the restart time is 0 s, so the timer is due in the very
        pass that sends the SYN, before the reactor has looked at the socket; the service
        sees one connection, the one the caller holds (before: two, the first one closed)."""
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        paced = PacedEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", port), retry_after=(0.0,))
        protocol = await paced.connect(Factory.forProtocol(Protocol))
        assert protocol.transport is not None
        self.addCleanup(protocol.transport.abortConnection)  # type: ignore[attr-defined]
        ours = protocol.transport.getHost().port  # type: ignore[attr-defined]
        listener.settimeout(10)  # ours is queued already, or about to be: not a wait for time
        accepted = []
        while True:
            conn, (_, peer_port) = listener.accept()
            self.addCleanup(conn.close)
            accepted.append(peer_port)
            if peer_port == ours:
                break
        # (Not asserted: restarts == 0. Were the kernel to defer the handshake past that one
        # poll, the restart would be right, and its cancelled SYN would leave nothing here.)
        self.assertEqual(accepted, [ours])
