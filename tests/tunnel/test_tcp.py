"""Raw TCP through the tunnel: many concurrent connections, and half-close."""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.test import iosim
from zope.interface import implementer

from nbbridge.mux import MuxSession, ServiceMap

from . import _tcp
from ._harness import TunnelTestCase

MB = 1024 * 1024


class EchoTests(TunnelTestCase):
    """Relay, agent exposing an echo service, client forwarding it."""

    async def start(self) -> tuple[int, _tcp.TrackingFactory]:
        port, echo = await self.serve(_tcp.Echo)
        await self.start_relay()
        await self.start_agent({"echo": str(port)})
        client = await self.start_client(forward=["echo"])
        return client.port("echo"), echo

    async def test_100_concurrent_connections(self) -> None:
        """100 connections at once, each 1 MB in random chunk sizes, all echoed byte-identical."""
        port, echo = await self.start()
        peers = [_tcp.Peer(MB, seed=i, half_close=True) for i in range(100)]
        await gatherResults([Deferred.fromCoroutine(self.connect(port, p)) for p in peers])
        reasons = await gatherResults([p.lost for p in peers])
        for i, (peer, reason) in enumerate(zip(peers, reasons, strict=True)):
            self.assertTrue(_tcp.clean(reason), f"connection {i} ended with {reason!r}")
            self.assertEqual((peer.sent, peer.received), (MB, MB), f"connection {i}")
            self.assertEqual(
                peer.received_hash.hexdigest(), peer.sent_hash.hexdigest(), f"connection {i}"
            )
        await echo.when_idle()

    async def test_half_close_still_gets_the_reply(self) -> None:
        """A client that shuts down its writing side still receives the whole reply after it."""
        port, _ = await self.serve(_tcp.ReplyAfterEOF)
        await self.start_relay()
        await self.start_agent({"reply": str(port)})
        client = await self.start_client(forward=["reply"])

        peer = _tcp.Peer(3 * MB, seed=42, half_close=True)
        peer.keep = bytearray()
        await self.connect(client.port("reply"), peer)
        reason = await peer.lost
        self.assertTrue(_tcp.clean(reason), f"ended with {reason!r}")
        header, _, body = bytes(peer.keep).partition(b"\n")
        # The service saw our EOF after every byte we sent...
        self.assertEqual(header.decode(), f"{3 * MB} {peer.sent_hash.hexdigest()}")
        # ...and everything it sent after that EOF reached us.
        self.assertEqual(len(body), _tcp.ReplyAfterEOF.reply_size)
        self.assertEqual(body, _tcp.pattern(0, _tcp.ReplyAfterEOF.reply_size))

    async def test_echo_half_close_both_ways(self) -> None:
        """Echo half-closes back after our EOF: both directions end cleanly, nothing lost."""
        port, _ = await self.start()
        for seed, size in enumerate([1, 1000, 65536, 65537, 5 * MB]):
            await self.echo_once(port, size=size, seed=seed)


@implementer(IHalfCloseableProtocol)
class Gated(_tcp.Tracked):
    """A service that reads nothing until ``open_gate()``; ``eof`` fires on the peer's EOF."""

    def __init__(self) -> None:
        super().__init__()
        self.eof: Deferred[int] = Deferred()
        self.hash = hashlib.sha256()

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def open_gate(self) -> None:
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.hash.update(data)
        self.count(data)

    def readConnectionLost(self) -> None:
        self.eof.callback(self.received)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


@implementer(IStreamClientEndpoint)
class ThenPump:
    """Connects through ENDPOINT, keeps the protocol, then moves the pipe on (next turn)."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint
        self.pump: iosim.IOPump | None = None
        self.protocol: Any = None

    def connect(self, factory: Any) -> Deferred[Any]:
        def connected(protocol: Any) -> Any:
            assert self.pump is not None
            self.protocol = protocol
            reactor.callLater(0, self.pump.flush)  # type: ignore[attr-defined]
            return protocol

        return self._endpoint.connect(factory).addCallback(connected)


class SpliceHalfCloseTests(TunnelTestCase):
    """The agent's join of a channel and a TCP connection, over a real TCP connection."""

    async def test_close_reaches_a_service_whose_buffer_is_full(self) -> None:
        """The peer's CLOSE arrives just as the TCP send buffer went over its high-water mark.

        That happens when data and CLOSE come in one WebSocket message: the last data fills
        the buffer (the channel, its producer, is paused), then the CLOSE asks for a write
        shutdown. The service must still get its EOF once it reads the data.
        """
        port, services = await self.serve(Gated)
        endpoint = ThenPump(TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        # Windows large enough for all the data to come in one delivery.
        window = 16 * MB
        opener = MuxSession(initiator=True, label="client", window=window)
        accepting = MuxSession(
            initiator=False, acceptor=ServiceMap({"svc": endpoint}), label="agent", window=window
        )
        pump = iosim.connect(
            accepting,
            iosim.makeFakeServer(accepting),
            opener,
            iosim.makeFakeClient(opener),
            greet=False,
        )
        endpoint.pump = pump
        pump.flush()

        def close_sessions() -> None:
            opener.close("test over")
            pump.flush()

        self.addCleanup(close_sessions)

        opening = opener.open("svc")
        pump.flush()
        channel = await opening
        service: Gated = await services.accepted.get()
        channel.attach(Protocol())
        # Exactly the high-water mark of the agent's connection to the service, then one byte
        # more in a frame of its own: the mark is crossed by the last DATA before the CLOSE.
        mark = endpoint.protocol.transport.bufferSize
        self.assertLess(mark, window)
        data = _tcp.pattern(0, mark + 1)
        channel.write(data[:mark])
        channel.write(data[mark:])
        channel.loseWriteConnection()
        pump.flush()  # DATA and CLOSE reach the agent's session in one delivery

        service.open_gate()
        eof = service.eof
        eof.addTimeout(15, reactor)
        try:
            received = await eof
        except Exception:
            self.fail(
                f"the service read {service.received} bytes and never got EOF: the write "
                "shutdown was lost (TcpSide.peer_closed_writing left the paused channel "
                "registered as the TCP transport's producer)"
            )
        self.assertEqual(received, len(data))
        self.assertEqual(service.hash.digest(), hashlib.sha256(data).digest())
