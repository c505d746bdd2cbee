"""Two MuxSessions over a real loopback TCP connection, with real services and forwards."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from nbbridge.mux import (
    ChannelEndpoint,
    ForwardingFactory,
    MuxSession,
    PacedEndpoint,
    ServiceMap,
)
from nbbridge.wire import Data, FrameDecoder, Open, OpenOk, Reason, Reset, encode
from tests._cleanup import add_async_cleanup
from tests._loopback import LOOPBACK, Collector, TrackingFactory, listen, serve

from ._helpers import HalfCloseEcho, HashSink, tcp_endpoint


class PatternFile:
    """A file-like object of ``size`` pseudo-random bytes, made as they are read."""

    def __init__(self, size: int, seed: int = 1) -> None:
        self._left = size
        self._random = random.Random(seed)
        self.hash = hashlib.sha256()

    def read(self, n: int) -> bytes:
        n = min(n, self._left)
        self._left -= n
        data = self._random.randbytes(n)
        self.hash.update(data)
        return data


@implementer(IHalfCloseableProtocol)
class Uploader(Protocol):
    """Sends a file with backpressure, half-closes, then collects the reply until EOF."""

    def __init__(self, source: PatternFile) -> None:
        self.source = source
        self.reply = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        d = FileSender().beginFileTransfer(self.source, self.transport)
        d.addCallback(lambda _: self.transport.loseWriteConnection())  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.reply += data

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if not self.done.called:
            self.done.callback(bytes(self.reply))


class LoopbackTests(TestCase):
    async def _setup(self) -> None:
        sink_port = await listen(self, Factory.forProtocol(HashSink))
        echo_port = await listen(self, Factory.forProtocol(HalfCloseEcho))
        acceptor = ServiceMap({"sink": tcp_endpoint(sink_port), "echo": tcp_endpoint(echo_port)})
        self.server_sessions: list[MuxSession] = []

        def make_server() -> MuxSession:
            s = MuxSession(initiator=False, acceptor=acceptor, label="agent")
            self.server_sessions.append(s)
            return s

        mux_port = await listen(self, Factory.forProtocol(make_server))
        self.session = MuxSession(initiator=True, label="client")
        await TCP4ClientEndpoint(reactor, "127.0.0.1", mux_port).connect(
            Factory.forProtocol(lambda: self.session)
        )
        self.sink_forward = await listen(
            self, ForwardingFactory(ChannelEndpoint.on(self.session, "sink"))
        )
        self.echo_forward = await listen(
            self, ForwardingFactory(ChannelEndpoint.on(self.session, "echo"))
        )
        add_async_cleanup(self, self._close)

    async def _close(self) -> None:
        closed = [self.session.when_closed()] + [s.when_closed() for s in self.server_sessions]
        self.session.close("test over")
        await DeferredList(closed)

    async def _upload(self, port: int, size: int, seed: int = 1) -> tuple[PatternFile, bytes]:
        source = PatternFile(size, seed)
        proto = Uploader(source)
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
            Factory.forProtocol(lambda: proto)
        )
        reply = await proto.done
        return source, reply

    async def test_100_megabytes_arrive_identical(self) -> None:
        await self._setup()
        size = 100 * 1024 * 1024
        source, reply = await self._upload(self.sink_forward, size)
        self.assertEqual(reply.decode(), f"{size} {source.hash.hexdigest()}")
        self.assertEqual(self.session.channels, {})

    async def test_half_close_still_gets_reply(self) -> None:
        """The client shuts down its writing side; the echo of everything still arrives."""
        await self._setup()
        source, reply = await self._upload(self.echo_forward, 3 * 1024 * 1024 + 17, seed=7)
        self.assertEqual(hashlib.sha256(reply).hexdigest(), source.hash.hexdigest())

    async def test_many_parallel_connections(self) -> None:
        await self._setup()
        results = await DeferredList(
            [
                Deferred.fromCoroutine(self._upload(self.echo_forward, 200_000 + i, seed=i))
                for i in range(50)
            ],
            consumeErrors=True,
        )
        for ok, (source, reply) in results:  # type: ignore[misc]
            self.assertTrue(ok)
            self.assertEqual(hashlib.sha256(reply).hexdigest(), source.hash.hexdigest())

    async def test_unknown_service_closes_forwarded_connection(self) -> None:
        await self._setup()
        port = await listen(self, ForwardingFactory(ChannelEndpoint.on(self.session, "nope")))
        _source, reply = await self._upload(port, 10)
        self.assertEqual(reply, b"")


class _RawPeer(Protocol):
    """A hostile mux peer: writes frames by hand and collects the frames it gets back."""

    def __init__(self, expected_resets: int) -> None:
        self._decoder = FrameDecoder()
        self._expected = expected_resets
        self.frames: list[object] = []
        self.resets: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.frames += self._decoder.feed(data)
        resets = sum(isinstance(f, Reset) for f in self.frames)
        if resets >= self._expected and not self.resets.called:
            self.resets.callback(None)


class EarlyDataTests(TestCase):
    async def test_data_before_open_ok_leaks_no_service_connection(self) -> None:
        """Issue 16: 20 OPENs each followed at once by DATA left 20 service connections open."""
        service = TrackingFactory(Factory.forProtocol(Protocol))
        service_port = await serve(self, LOOPBACK, service)
        acceptor = ServiceMap({"s": tcp_endpoint(service_port)})
        sessions: list[MuxSession] = []

        def make_session() -> MuxSession:
            sessions.append(MuxSession(initiator=True, acceptor=acceptor, label="agent"))
            return sessions[-1]

        mux_port = await listen(self, Factory.forProtocol(make_session))
        peer = _RawPeer(expected_resets=20)
        await TCP4ClientEndpoint(reactor, "127.0.0.1", mux_port).connect(
            Factory.forProtocol(lambda: peer)
        )
        self.addCleanup(lambda: peer.transport.abortConnection())  # type: ignore[union-attr]
        cids = range(2, 42, 2)
        peer.transport.write(  # type: ignore[union-attr]
            b"".join(encode(Open(cid, "s", 1000)) + encode(Data(cid, b"early")) for cid in cids)
        )
        await peer.resets
        # Every connect was given up; whatever the service accepted anyway is closed again.
        idle = service.when_idle()
        idle.addTimeout(10, reactor)
        await idle
        self.assertEqual(
            [(f.channel, f.text) for f in peer.frames if isinstance(f, Reset)],
            [(cid, "DATA before OPEN_OK") for cid in cids],
        )
        self.assertFalse([f for f in peer.frames if isinstance(f, OpenOk)])
        (session,) = sessions
        self.assertEqual((session.channels, session._accepting), ({}, {}))


class AbandonedConnectTests(TestCase):
    """A service connection given up while it was being made ends with a reset, never a FIN.

    Twisted starts a TCP connect on the turn after ``connect()``; on loopback the kernel
    completes the handshake within that ``connect(2)``, before the reactor has seen it. A
    session that gives the connect up just then (the peer reset the channel, the link was
    lost) cancelled it, which closes the socket in order: the service accepted a connection
    that ended with a clean FIN, as if a user had connected and left, while the user's
    request was lost with the fault. The service is paced, as the agent's ``--expose``
    services are: the PacedEndpoint lets a connect under way finish (``_Queued._cancel``).
    """

    async def service_end_after(self, give_up: Callable[[MuxSession], object]) -> Failure:
        service = TrackingFactory(Factory.forProtocol(Collector))
        port = await serve(self, LOOPBACK, service)
        session = MuxSession(
            initiator=True,
            acceptor=ServiceMap({"s": PacedEndpoint(tcp_endpoint(port))}),
            label="agent",
        )
        session.makeConnection(StringTransport())
        session.dataReceived(encode(Open(2, "s", 1000)))
        reactor.callLater(0, give_up, session)  # type: ignore[attr-defined]
        accepted: Deferred[Collector] = service.accepted.get()
        accepted.addTimeout(10, reactor)
        collector = await accepted
        lost = collector.lost
        lost.addTimeout(10, reactor)
        await lost
        assert collector.reason is not None
        return collector.reason

    async def test_peer_resets_the_channel(self) -> None:
        reason = await self.service_end_after(
            lambda session: session.dataReceived(encode(Reset(2, Reason.ABORTED, "gone")))
        )
        self.assertIsNone(reason.check(ConnectionDone), f"the service saw a FIN: {reason!r}")

    async def test_link_lost(self) -> None:
        reason = await self.service_end_after(
            lambda session: session.connectionLost(Failure(ConnectionDone()))
        )
        self.assertIsNone(reason.check(ConnectionDone), f"the service saw a FIN: {reason!r}")
