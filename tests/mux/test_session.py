"""MuxSession over in-memory pipes: opening, flow control, closing and bad peers."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from nbbridge.mux import (
    Channel,
    ChannelEndpoint,
    ChannelOpenFailed,
    ChannelReset,
    MuxSession,
    OpenRequest,
    ServiceMap,
    ServiceUnavailable,
    SessionClosed,
    TooManyChannels,
    UnknownService,
)
from nbbridge.wire import (
    Close,
    Data,
    FrameDecoder,
    GoAway,
    Open,
    OpenFail,
    OpenOk,
    Reason,
    Reset,
    Window,
    encode,
)
from tests._loopback import Collector

from ._helpers import StringEndpoint, lost_reason, session_pair


class RefusingEndpoint:
    def connect(self, factory: Factory) -> Deferred[object]:
        from twisted.internet.defer import fail

        return fail(ConnectionRefusedError("127.0.0.1:9"))


def opened(d: Deferred[Channel]) -> Channel:
    result: list[Channel] = []
    d.addCallback(result.append)
    assert result, "the open has not completed"
    return result[0]


class OpenTests(TestCase):
    def test_open_and_exchange(self) -> None:
        service = StringEndpoint()
        a, _b, pump = session_pair(ServiceMap({"echo": service}))
        d = a.open("echo", {"who": "test"})
        pump.flush()
        channel = opened(d)
        self.assertEqual((channel.service, channel.metadata), ("echo", {"who": "test"}))
        app = Collector()
        channel.attach(app)
        channel.write(b"hello")
        pump.flush()
        ((tcp, transport),) = service.connections
        self.assertEqual(transport.value(), b"hello")
        tcp.dataReceived(b"world")
        pump.flush()
        self.assertEqual(bytes(app.data), b"world")

    def test_unknown_service(self) -> None:
        a, _b, pump = session_pair(ServiceMap({"echo": StringEndpoint()}))
        d = a.open("nope")
        pump.flush()
        f = self.failureResultOf(d, UnknownService)
        self.assertEqual(str(f.value), "unknown service 'nope'")
        self.assertEqual(f.value.code, Reason.UNKNOWN_SERVICE)

    def test_service_down(self) -> None:
        a, b, pump = session_pair(ServiceMap({"ssh": RefusingEndpoint()}))  # type: ignore[dict-item]
        d = a.open("ssh")
        pump.flush()
        f = self.failureResultOf(d, ServiceUnavailable)
        self.assertIn("could not connect to service 'ssh'", str(f.value))
        self.assertEqual(b.channels, {})

    def test_no_acceptor_refuses(self) -> None:
        _a, b, pump = session_pair(None)
        d = b.open("anything")
        pump.flush()
        error = self.failureResultOf(d, ChannelOpenFailed).value
        self.assertEqual(
            (error.code, error.reason), (Reason.REFUSED, "this side accepts no channels")
        )

    def test_acceptor_sees_request(self) -> None:
        seen: list[OpenRequest] = []

        def acceptor(request: OpenRequest) -> StringEndpoint:
            seen.append(request)
            return StringEndpoint()

        a, _b, pump = session_pair(acceptor)  # type: ignore[arg-type]
        a.open("jupyter", {"client": "laptop"})
        pump.flush()
        self.assertEqual(seen, [OpenRequest("jupyter", {"client": "laptop"}, 1)])

    def test_ids_by_parity(self) -> None:
        a, b, pump = session_pair(ServiceMap({"x": StringEndpoint()}))
        b._acceptor, a._acceptor = (
            ServiceMap({"x": StringEndpoint()}),
            ServiceMap({"x": StringEndpoint()}),
        )
        ids_a = [opened_now(a, pump).id for _ in range(3)]
        ids_b = [opened_now(b, pump).id for _ in range(3)]
        self.assertEqual(ids_a, [1, 3, 5])
        self.assertEqual(ids_b, [2, 4, 6])

    def test_thousand_concurrent_channels(self) -> None:
        service = StringEndpoint()
        a, b, pump = session_pair(ServiceMap({"echo": service}))
        ds = [a.open("echo", {"n": str(i)}) for i in range(1000)]
        pump.flush()
        channels = [opened(d) for d in ds]
        apps = []
        for i, ch in enumerate(channels):
            app = Collector()
            ch.attach(app)
            apps.append(app)
            ch.write(b"ping %d" % i)
        pump.flush()
        self.assertEqual(len(service.connections), 1000)
        self.assertEqual(len(b.channels), 1000)
        for tcp, transport in service.connections:
            tcp.dataReceived(b"pong " + transport.value().split()[1])
        pump.flush()
        for i, app in enumerate(apps):
            self.assertEqual(bytes(app.data), b"pong %d" % i)

    def test_cancel_open(self) -> None:
        service = StringEndpoint()
        a, b, pump = session_pair(ServiceMap({"echo": service}))
        d = a.open("echo")
        d.cancel()
        self.failureResultOf(d)
        pump.flush()
        self.assertEqual((a.opening, a.channels, b.channels), ({}, {}, {}))

    def test_channel_endpoint(self) -> None:
        service = StringEndpoint()
        a, _b, pump = session_pair(ServiceMap({"echo": service}))
        d = ChannelEndpoint.on(a, "echo").connect(Factory.forProtocol(Collector))
        pump.flush()
        app = self.successResultOf(d)
        self.assertTrue(app.made)  # type: ignore[attr-defined]

    def test_too_many_channels(self) -> None:
        a, _b, pump = session_pair(ServiceMap({"x": StringEndpoint()}), max_channels=2)
        ds = [a.open("x") for _ in range(3)]
        self.failureResultOf(ds[2], TooManyChannels)
        pump.flush()
        opened(ds[0])


def opened_now(session: MuxSession, pump: object) -> Channel:
    d = session.open("x")
    pump.flush()  # type: ignore[attr-defined]
    return opened(d)


class FlowControlTests(TestCase):
    def test_paused_reader_does_not_stall_others(self) -> None:
        """One consumer stops reading: its data waits (bounded), the other channel flows."""
        window = 64 * 1024
        service = StringEndpoint()
        a, _b, pump = session_pair(ServiceMap({"s": service}), window=window, start_window=window)
        slow = opened(_completed(a, "s", pump))
        fast = opened(_completed(a, "s", pump))
        slow_app, fast_app = Collector(), Collector()
        slow.attach(slow_app)
        fast.attach(fast_app)
        slow.pauseProducing()  # the slow channel's consumer is full
        (slow_tcp, slow_tr), (fast_tcp, fast_tr) = service.connections
        blob = b"x" * 16384
        for _ in range(20):  # 320 KiB each, 5x the window
            slow_tcp.dataReceived(blob)
            fast_tcp.dataReceived(blob)
            pump.flush()
        self.assertEqual(len(fast_app.data), 20 * 16384)
        self.assertEqual(len(slow_app.data), 0)
        self.assertLessEqual(slow.buffered, window)
        self.assertEqual(slow_tr.producerState, "paused")  # the service is not read any more
        self.assertEqual(fast_tr.producerState, "producing")
        slow.resumeProducing()
        pump.flush()
        self.assertEqual(bytes(slow_app.data), blob * 20)
        self.assertEqual(slow_tr.producerState, "producing")

    def test_window_grows_for_a_fast_consumer_only(self) -> None:
        """A credit-starved sender with a consumer that keeps up gets a bigger window."""
        service = StringEndpoint()
        a, b, pump = _growing_pair(service)
        fast = opened(_completed(a, "s", pump))
        slow = opened(_completed(a, "s", pump))
        fast.attach(Collector())
        slow.attach(Collector())
        slow.pauseProducing()
        (fast_tcp, _), (slow_tcp, _) = service.connections
        for _ in range(16):  # each step writes more than any window: the sender starves
            fast_tcp.dataReceived(b"f" * 2 * 1024 * 1024)
            slow_tcp.dataReceived(b"s" * 32768)
            pump.flush()
        self.assertGreater(fast._window, 64 * 1024)
        self.assertLessEqual(fast._window, 1024 * 1024)
        self.assertEqual(slow._window, 64 * 1024)
        self.assertLessEqual(slow.buffered, 64 * 1024)
        self.assertTrue(a.is_open and b.is_open)
        self.assertIn(fast.id, a.channels)  # never reset for overrunning

    def test_first_window_covers_a_short_transfer(self) -> None:
        """Each end offers the start window in OPEN / OPEN_OK: 3 MiB pass with no grant."""
        service = StringEndpoint()
        a, b, pump = session_pair(ServiceMap({"s": service}), start_window=4 * 1024 * 1024)
        channel = opened(_completed(a, "s", pump))
        self.assertEqual(channel.window, 4 * 1024 * 1024)  # what A's OPEN offered
        self.assertEqual(channel._send_credit, 4 * 1024 * 1024)  # what B's OPEN_OK offered
        app = Collector()
        channel.attach(app)
        channel.pauseProducing()  # A's consumer takes nothing, so A grants nothing
        ((tcp, transport),) = service.connections
        tcp.dataReceived(b"d" * 3 * 1024 * 1024)
        pump.flush()
        self.assertEqual(channel.buffered, 3 * 1024 * 1024)  # all of it came in one window
        self.assertEqual(transport.producerState, "producing")  # B never ran out of credit
        channel.resumeProducing()
        pump.flush()
        self.assertEqual(len(app.data), 3 * 1024 * 1024)
        self.assertTrue(a.is_open and b.is_open)

    def test_first_window_grants_as_often_as_a_small_one(self) -> None:
        """After a short transfer the receiver has granted (and, when resumable, ACKed) all
        but less than a quarter of the 256 KiB window, not of the 4 MiB one: an idle channel
        does not leave its sender keeping up to 1 MiB for a resume."""
        service = StringEndpoint()
        a, b, pump = session_pair(ServiceMap({"s": service}), start_window=4 * 1024 * 1024)
        channel = opened(_completed(a, "s", pump))
        channel.attach(Collector())
        ((tcp, _),) = service.connections
        tcp.dataReceived(b"r" * 200 * 1024)
        pump.flush()
        (sender,) = b.channels.values()
        self.assertLess(channel._unacked, 64 * 1024)
        self.assertGreater(sender._send_credit, 4 * 1024 * 1024 - 64 * 1024)

    def test_first_windows_take_half_the_budget_at_most(self) -> None:
        """First windows are lent from half the budget; later channels start at ``window``;
        every loan comes back when its channel ends or its open fails."""
        service = StringEndpoint()
        kib = 1024
        a, b, pump = session_pair(
            ServiceMap({"s": service}),
            window=64 * kib,
            start_window=1024 * kib,
            max_window=1024 * kib,
            window_budget=4096 * kib,
        )
        channels = [opened(_completed(a, "s", pump)) for _ in range(4)]
        # 960 KiB lent twice, then the 128 KiB left above the reserved half, then nothing.
        windows = [1024 * kib, 1024 * kib, 192 * kib, 64 * kib]
        self.assertEqual([ch.window for ch in channels], windows)
        self.assertEqual([ch._send_credit for ch in channels], windows)  # B's, likewise
        self.assertEqual(a._window_budget, 2048 * kib)
        refused = a.open("nothing here")
        cancelled = a.open("s")
        cancelled.cancel()
        pump.flush()
        self.failureResultOf(refused, UnknownService)
        self.failureResultOf(cancelled)
        self.assertEqual(a._window_budget, 2048 * kib)
        for ch in channels:
            ch.loseConnection()
        pump.flush()
        for tcp, _ in service.connections:
            tcp.transport.loseConnection()  # type: ignore[union-attr]
            tcp.readConnectionLost()  # type: ignore[attr-defined]
        pump.flush()
        self.assertEqual((a.channels, b.channels), ({}, {}))
        self.assertEqual((a._window_budget, b._window_budget), (4096 * kib, 4096 * kib))

    def test_window_grows_at_each_grant(self) -> None:
        """A consumer that keeps up doubles its window at every grant (a quarter window),
        not once per whole window: from 64 KiB to 1 MiB within 240 KiB."""
        service = StringEndpoint()
        a, _b, pump = _growing_pair(service)
        channel = opened(_completed(a, "s", pump))
        channel.attach(Collector())
        ((tcp, _),) = service.connections
        for _ in range(15):
            tcp.dataReceived(b"g" * 16 * 1024)
            pump.flush()
        self.assertEqual(channel.window, 1024 * 1024)

    def test_window_growth_is_capped_per_session(self) -> None:
        service = StringEndpoint()
        a, _b, pump = session_pair(
            ServiceMap({"s": service}),
            window=64 * 1024,
            max_window=1024 * 1024,
            window_budget=128 * 1024,
        )
        channels = [opened(_completed(a, "s", pump)) for _ in range(3)]
        for ch in channels:
            ch.attach(Collector())
        for _ in range(16):
            for tcp, _ in service.connections:
                tcp.dataReceived(b"x" * 2 * 1024 * 1024)
            pump.flush()
        self.assertEqual(sum(ch._window - 64 * 1024 for ch in channels), 128 * 1024)
        for ch in channels:
            ch.loseConnection()
        pump.flush()
        self.assertEqual(a._window_budget, 128 * 1024)  # growth returned on close

    def test_overrun_window_resets_channel(self) -> None:
        a = MuxSession(initiator=True, window=1000, start_window=1000)
        transport = StringTransport()
        a.makeConnection(transport)
        d = a.open("x")
        a.dataReceived(encode(OpenOk(1, 1000)))
        channel = opened(d)
        app = Collector()
        channel.attach(app)
        transport.clear()
        a.dataReceived(encode(Data(1, b"y" * 1001)))
        f = lost_reason(self, app)
        f.trap(ChannelReset)
        self.assertEqual(f.value.code, Reason.WINDOW_EXCEEDED)
        frames = FrameDecoder().feed(transport.value())
        self.assertEqual(type(frames[0]), Reset)
        self.assertEqual(frames[0].code, Reason.WINDOW_EXCEEDED)  # type: ignore[union-attr]
        self.assertTrue(a.is_open)

    def test_lent_first_window_is_enforced_both_ways(self) -> None:
        """Each end takes what its OPEN / OPEN_OK offered (the lent first window) before any
        WINDOW, and resets a peer that sends one byte more; the loan comes back."""
        small = {"window": 1000, "start_window": 5000, "max_window": 5000}
        service = StringEndpoint()
        opener = MuxSession(initiator=True, window_budget=100_000, **small)
        acceptor = MuxSession(
            initiator=False, acceptor=ServiceMap({"s": service}), window_budget=100_000, **small
        )
        to_opener, to_acceptor = StringTransport(), StringTransport()
        opener.makeConnection(to_opener)
        acceptor.makeConnection(to_acceptor)
        d = opener.open("s")
        acceptor.dataReceived(to_opener.value())
        [offered] = FrameDecoder().feed(to_opener.value())
        [answered] = FrameDecoder().feed(to_acceptor.value())
        self.assertEqual((offered.window, answered.window), (5000, 5000))  # type: ignore[union-attr]
        to_opener.clear()
        opener.dataReceived(to_acceptor.value())
        to_acceptor.clear()
        channel = opened(d)
        channel.attach(Collector())
        channel.pauseProducing()  # neither end's consumer takes anything: no WINDOW goes out
        acceptor.channels[1].pauseProducing()
        for session, out in ((opener, to_opener), (acceptor, to_acceptor)):
            session.dataReceived(encode(Data(1, b"x" * 5000)))
            self.assertEqual(out.value(), b"")
            session.dataReceived(encode(Data(1, b"x")))
            [reset] = FrameDecoder().feed(out.value())
            self.assertEqual((type(reset), reset.code), (Reset, Reason.WINDOW_EXCEEDED))  # type: ignore[union-attr]
            self.assertEqual((session.channels, session._window_budget), ({}, 100_000))

    def test_sender_respects_credit(self) -> None:
        a = MuxSession(initiator=True)
        transport = StringTransport()
        a.makeConnection(transport)
        d = a.open("x")
        a.dataReceived(encode(OpenOk(1, 100)))
        channel = opened(d)
        producer = StringTransport()
        channel.registerProducer(producer, True)
        transport.clear()
        channel.write(b"z" * 250)
        sent = sum(
            len(f.payload) for f in FrameDecoder().feed(transport.value()) if isinstance(f, Data)
        )
        self.assertEqual(sent, 100)
        self.assertEqual(producer.producerState, "paused")
        transport.clear()
        a.dataReceived(encode(Window(1, 200)))
        sent = sum(
            len(f.payload) for f in FrameDecoder().feed(transport.value()) if isinstance(f, Data)
        )
        self.assertEqual(sent, 150)
        self.assertEqual(producer.producerState, "producing")

    def test_session_backpressure_pauses_channel_producers(self) -> None:
        service = StringEndpoint()
        a, _b, pump = session_pair(ServiceMap({"s": service}))
        channel = opened(_completed(a, "s", pump))
        producer = StringTransport()
        channel.registerProducer(producer, True)
        a.pauseProducing()
        self.assertEqual(producer.producerState, "paused")
        a.resumeProducing()
        self.assertEqual(producer.producerState, "producing")


def _growing_pair(service: StringEndpoint) -> tuple[MuxSession, MuxSession, iosim.IOPump]:
    """A session pair whose channels start at 64 KiB and may grow to 1 MiB."""
    return session_pair(
        ServiceMap({"s": service}),
        window=64 * 1024,
        start_window=64 * 1024,
        max_window=1024 * 1024,
    )


def _completed(session: MuxSession, service: str, pump: object) -> Deferred[Channel]:
    d = session.open(service)
    pump.flush()  # type: ignore[attr-defined]
    return d


class CloseTests(TestCase):
    def test_half_close_both_ways(self) -> None:
        service = StringEndpoint()
        a, b, pump = session_pair(ServiceMap({"s": service}))
        channel = opened(_completed(a, "s", pump))
        app = HalfCollector()
        channel.attach(app)
        channel.write(b"request")
        channel.loseWriteConnection()
        pump.flush()
        ((tcp, transport),) = service.connections
        self.assertEqual(transport.value(), b"request")
        # The service read EOF (the splice shut down its writing side); it replies and closes.
        tcp.dataReceived(b"reply")
        tcp.readConnectionLost()
        tcp.writeConnectionLost()
        tcp.connectionLost(_done())
        pump.flush()
        self.assertEqual(bytes(app.data), b"reply")
        self.assertTrue(app.read_closed)
        lost_reason(self, app).trap(ConnectionDone)
        self.assertEqual((a.channels, b.channels), ({}, {}))

    def test_reset_reaches_peer_application(self) -> None:
        service = StringEndpoint()
        a, b, pump = session_pair(ServiceMap({"s": service}))
        channel = opened(_completed(a, "s", pump))
        app = Collector()
        channel.attach(app)
        b.channels[channel.id].reset(Reason.ABORTED, "the service crashed")
        pump.flush()
        f = lost_reason(self, app)
        f.trap(ChannelReset)
        self.assertEqual(f.value.reason, "the service crashed")
        self.assertEqual((a.channels, b.channels), ({}, {}))

    def test_abort_aborts_service_connection(self) -> None:
        service = StringEndpoint()
        a, _b, pump = session_pair(ServiceMap({"s": service}))
        channel = opened(_completed(a, "s", pump))
        channel.attach(Collector())
        channel.abortConnection()
        pump.flush()
        ((_tcp, transport),) = service.connections
        self.assertTrue(transport.disconnecting)

    def test_session_loss_ends_channels_and_opens(self) -> None:
        service = StringEndpoint()
        clock = Clock()
        a, b, pump = session_pair(ServiceMap({"s": service}), clock=clock)
        channel = opened(_completed(a, "s", pump))
        app = Collector()
        channel.attach(app)
        pending = a.open("s")
        closed = a.when_closed()
        b.close("agent shutting down")
        pump.flush()
        lost_reason(self, app).trap(SessionClosed)
        self.failureResultOf(pending, SessionClosed)
        self.assertNoResult(closed)  # waiters are called on a later turn, never inside
        clock.advance(0)
        self.assertIn("agent shutting down", self.successResultOf(closed))
        late = a.when_closed()
        self.assertNoResult(late)  # the same for one who asks once it is over
        clock.advance(0)
        self.assertIn("agent shutting down", self.successResultOf(late))
        self.failureResultOf(a.open("s"), SessionClosed)


@implementer(IHalfCloseableProtocol)
class HalfCollector(Collector):
    read_closed = False

    def readConnectionLost(self) -> None:
        self.read_closed = True

    def writeConnectionLost(self) -> None:
        pass


def _done() -> Failure:
    return Failure(ConnectionDone())


class BadPeerTests(TestCase):
    def _session(self) -> tuple[MuxSession, StringTransport]:
        self.clock = Clock()
        session = MuxSession(
            initiator=True, acceptor=ServiceMap({"s": StringEndpoint()}), clock=self.clock
        )
        transport = StringTransport()
        session.makeConnection(transport)
        return session, transport

    def test_garbage_closes_session_with_reason(self) -> None:
        session, transport = self._session()
        closed = session.when_closed()
        session.dataReceived(b"\xff" * 64)
        frames = FrameDecoder().feed(transport.value())
        self.assertIsInstance(frames[-1], GoAway)
        self.assertIn("unknown frame type 255", frames[-1].text)  # type: ignore[union-attr]
        self.assertTrue(transport.disconnecting)
        session.connectionLost(_done())
        self.clock.advance(0)
        self.assertIn("protocol violation", self.successResultOf(closed))

    def test_data_for_unknown_channel_is_reset(self) -> None:
        session, transport = self._session()
        session.dataReceived(encode(Data(7, b"hi")))
        (frame,) = FrameDecoder().feed(transport.value())
        self.assertEqual(frame, Reset(7, Reason.PROTOCOL_ERROR, "unknown channel 7"))
        self.assertTrue(session.is_open)

    def test_open_with_wrong_parity_closes_session(self) -> None:
        session, transport = self._session()
        session.dataReceived(encode(Open(3, "s", 1000)))  # odd ids are the initiator's own
        frames = FrameDecoder().feed(transport.value())
        self.assertIsInstance(frames[-1], GoAway)
        self.assertTrue(transport.disconnecting)

    def test_oversized_frame_closes_session(self) -> None:
        session, transport = self._session()
        session.dataReceived(b"\x04\x00\x00\x00\x00\x02\xff\xff\xff\xff")
        frames = FrameDecoder().feed(transport.value())
        self.assertIn("more than", frames[-1].text)  # type: ignore[union-attr]


class _PendingEndpoint:
    """A service whose connects wait: ``finish()`` connects the last one anyway, even if it
    was cancelled (as an endpoint that cannot cancel would)."""

    def __init__(self) -> None:
        self.cancelled = 0
        self.factories: list[Factory] = []
        self.transports: list[StringTransport] = []

    def connect(self, factory: Factory) -> Deferred[object]:
        self.factories.append(factory)

        def cancel(d: Deferred[object]) -> None:
            self.cancelled += 1

        return Deferred(cancel)

    def finish(self) -> StringTransport:
        protocol = self.factories[-1].buildProtocol(None)
        transport = StringTransport()
        assert protocol is not None
        protocol.makeConnection(transport)
        self.transports.append(transport)
        return transport


class PendingAcceptTests(TestCase):
    """Issue 16: frames before OPEN_OK leaked the service connection; warnings flooded."""

    def _session(self, **kwargs: int) -> tuple[MuxSession, StringTransport, _PendingEndpoint]:
        service = _PendingEndpoint()
        session = MuxSession(
            initiator=True,
            acceptor=ServiceMap({"s": service}),  # type: ignore[dict-item]
            **kwargs,  # type: ignore[arg-type]
        )
        transport = StringTransport()
        session.makeConnection(transport)
        return session, transport, service

    def test_data_before_open_ok_gives_up_the_accept(self) -> None:
        session, transport, service = self._session()
        session.dataReceived(encode(Open(2, "s", 1000)) + encode(Data(2, b"too early")))
        frames = FrameDecoder().feed(transport.value())
        self.assertEqual(frames, [Reset(2, Reason.PROTOCOL_ERROR, "DATA before OPEN_OK")])
        self.assertEqual(service.cancelled, 1)
        # An endpoint that connects anyway: that connection is aborted at once, never used.
        late = service.finish()
        self.assertTrue(late.disconnected, "the late service connection was left open")
        self.assertEqual(session.channels, {})
        self.assertEqual(FrameDecoder().feed(transport.value()), frames)  # no OPEN_OK
        self.assertTrue(session.is_open)

    def test_window_and_close_before_open_ok(self) -> None:
        for frame in (Window(2, 10), Close(2)):
            session, _transport, service = self._session()
            session.dataReceived(encode(Open(2, "s", 1000)) + encode(frame))
            self.assertEqual(service.cancelled, 1, frame)
            self.assertTrue(service.finish().disconnected, frame)
            self.assertEqual(session.channels, {}, frame)

    def test_reset_and_session_end_give_up_accepts(self) -> None:
        session, _transport, service = self._session()
        session.dataReceived(encode(Open(2, "s", 1000)) + encode(Reset(2, Reason.ABORTED, "x")))
        self.assertTrue(service.finish().disconnected)
        session.dataReceived(encode(Open(4, "s", 1000)))
        session.connectionLost(_done())
        self.assertEqual(service.cancelled, 2)
        self.assertTrue(service.finish().disconnected)

    def test_pending_accepts_are_capped_with_a_clear_reason(self) -> None:
        session, transport, _service = self._session(max_pending_accepts=2)
        session.dataReceived(b"".join(encode(Open(cid, "s", 1000)) for cid in (2, 4, 6)))
        (refusal,) = FrameDecoder().feed(transport.value())
        self.assertIsInstance(refusal, OpenFail)
        assert isinstance(refusal, OpenFail)
        self.assertEqual((refusal.channel, refusal.code), (6, Reason.TOO_MANY_CHANNELS))
        self.assertIn("pending-open limit reached: 2", refusal.text)

    def test_pending_accepts_count_against_the_channel_limit(self) -> None:
        session, transport, _service = self._session(max_channels=2)
        session.dataReceived(b"".join(encode(Open(cid, "s", 1000)) for cid in (2, 4, 6)))
        (refusal,) = FrameDecoder().feed(transport.value())
        self.assertIn("channel limit reached: 2", refusal.text)  # type: ignore[union-attr]

    def test_unknown_channel_warnings_are_aggregated(self) -> None:
        session, transport, _service = self._session()
        with capturedLogs() as events:
            session.dataReceived(b"".join(encode(Data(cid, b"x")) for cid in range(2, 4002, 2)))
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual([e["count"] for e in warnings], [1, 10, 100, 1000])
        self.assertEqual(session.unknown_frames, 2000)
        self.assertIn("(1000 such frames in this session)", formatEvent(warnings[-1]))
        self.assertEqual(len(FrameDecoder().feed(transport.value())), 2000)  # each reset once
        with capturedLogs() as events:
            session.connectionLost(_done())
        self.assertIn("2000 frames for unknown channels", "".join(map(formatEvent, events)))
