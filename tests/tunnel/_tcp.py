"""Plain TCP on both ends of the tunnel: the services an agent exposes, and the user's side.

Services (on the agent's side): ``Echo`` (echoes, half-closes back after EOF), ``Source``
(streams a counting pattern at the reader's pace, forever or N bytes), ``ReplyAfterEOF``
(reads to EOF, then answers with what it got and a large reply). The user's side is
``Peer``: it sends from a pull producer (so nothing piles up in memory), hashes what it
receives, and records how the connection ended.

Every server is listened on 127.0.0.1:0 and stopped at the end of the test, and the clean-up
waits until each of its connections has closed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPullProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from tests._loopback import TrackingFactory

CHUNK = 64 * 1024


def pattern(offset: int, size: int) -> bytes:
    """SIZE bytes of a counting pattern starting at stream OFFSET (so any slice is checkable)."""
    start = offset % 251
    block = bytes((start + i) % 251 for i in range(251)) * (size // 251 + 2)
    return block[:size]


def clean(reason: BaseException) -> bool:
    """Whether a connection ended with a clean close (FIN), not an abort or reset."""
    return isinstance(reason, ConnectionDone)


class Counting(Protocol):
    """Counts what it receives; ``wait_received(n)`` fires once N bytes have arrived."""

    def __init__(self) -> None:
        self.received = 0
        #: fires with the exception the connection ended with (ConnectionDone when clean)
        self.lost: Deferred[BaseException] = Deferred()
        self._waiting: list[tuple[int, Deferred[int]]] = []

    def count(self, data: bytes) -> None:
        self.received += len(data)
        for waiter in list(self._waiting):
            if self.received >= waiter[0]:
                self._waiting.remove(waiter)
                waiter[1].callback(self.received)

    def wait_received(self, n: int) -> Deferred[int]:
        """Fires once at least N bytes have been received (fails if the connection ends first)."""
        if self.received >= n:
            return succeed(self.received)
        d: Deferred[int] = Deferred()
        self._waiting.append((n, d))
        return d

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        waiting, self._waiting = self._waiting, []
        for n, d in waiting:
            d.errback(
                AssertionError(f"connection ended after {self.received} of {n} bytes: {reason}")
            )
        self.lost.callback(reason.value)


class Tracked(Counting):
    """A server-side protocol: counts what it receives and records how it ended."""


async def serve(
    protocol: Callable[[], Protocol],
) -> tuple[int, TrackingFactory, Callable[[], Deferred[None]]]:
    """Listen on 127.0.0.1:0 with PROTOCOL: (port, factory, stop).

    ``stop()`` stops listening, drops what is still connected and fires once all is closed.
    """
    factory = TrackingFactory(Factory.forProtocol(protocol))
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)

    async def stop() -> None:
        await port.stopListening()
        for wrapper in list(factory.protocols):
            wrapper.transport.abortConnection()
        await factory.when_idle()

    return port.getHost().port, factory, lambda: Deferred.fromCoroutine(stop())


@implementer(IHalfCloseableProtocol)
class Echo(Tracked):
    """Sends back what it reads; after the peer's EOF, finishes sending and half-closes."""

    def connectionMade(self) -> None:
        # The transport is its own producer: a full send buffer stops reading.
        self.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.count(data)
        self.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.transport.unregisterProducer()  # type: ignore[union-attr]
        self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


@implementer(IPullProducer)
class Source(Tracked):
    """Streams ``pattern`` at the pace its reader takes: ``size`` bytes, or forever if None."""

    def __init__(self, size: int | None = None) -> None:
        super().__init__()
        self.size = size
        self.sent = 0

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, False)  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        n = CHUNK if self.size is None else min(CHUNK, self.size - self.sent)
        if n <= 0:
            self.transport.unregisterProducer()  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.transport.write(pattern(self.sent, n))  # type: ignore[union-attr]
        self.sent += n

    def stopProducing(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class ReplyAfterEOF(Tracked):
    """Reads until EOF, then answers ``<count> <sha256>\\n`` and ``reply_size`` pattern bytes."""

    reply_size = 2 * 1024 * 1024

    def __init__(self) -> None:
        super().__init__()
        self.hash = hashlib.sha256()
        self.eof = False

    def dataReceived(self, data: bytes) -> None:
        self.count(data)
        self.hash.update(data)

    def readConnectionLost(self) -> None:
        self.eof = True
        header = f"{self.received} {self.hash.hexdigest()}\n".encode()
        self.transport.write(header + pattern(0, self.reply_size))  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol, IPullProducer)
class Peer(Counting):
    """The user's end: sends ``to_send`` bytes (seeded random data in random-sized chunks).

    It hashes what it sends and what it receives; ``wait_received(n)`` fires once N bytes have
    arrived; ``lost`` fires with the reason the connection ended. With ``half_close`` it shuts
    down its writing side after the last byte and keeps reading.
    """

    def __init__(
        self, to_send: int = 0, seed: int = 0, max_chunk: int = 100_000, half_close: bool = False
    ) -> None:
        super().__init__()
        self.to_send = to_send
        self.half_close = half_close
        self._rng = random.Random(seed)
        self._max_chunk = max_chunk
        self.sent = 0
        self.sent_hash = hashlib.sha256()
        self.received_hash = hashlib.sha256()
        self.keep: bytearray | None = None
        self.eof = False
        self.made: Deferred[Peer] = Deferred()

    def connectionMade(self) -> None:
        if self.to_send:
            self.transport.registerProducer(self, False)  # type: ignore[union-attr]
        self.made.callback(self)

    def resumeProducing(self) -> None:
        n = min(self._rng.randint(1, self._max_chunk), self.to_send - self.sent)
        if n <= 0:
            self.transport.unregisterProducer()  # type: ignore[union-attr]
            if self.half_close:
                self.transport.loseWriteConnection()  # type: ignore[union-attr]
            return
        chunk = self._rng.randbytes(n)
        self.sent += n
        self.sent_hash.update(chunk)
        self.transport.write(chunk)  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        self.received_hash.update(data)
        if self.keep is not None:
            self.keep += data
        self.count(data)

    def readConnectionLost(self) -> None:
        self.eof = True
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


async def connect(port: int, peer: Peer) -> Peer:
    """Connect PEER to 127.0.0.1:PORT."""
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(lambda: peer))
    return peer
