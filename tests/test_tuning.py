"""write_now: sent at once on an idle TCP connection, queued in order behind anything waiting."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from nbbridge._internals import write_now


class _Sink(Protocol):
    """Collects everything until the peer closes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(bytes(self.data))


@implementer(IHalfCloseableProtocol)
class _Ending(Protocol):
    """Records whether it saw an EOF, and how its connection ended."""

    def __init__(self) -> None:
        self.eof = False
        #: fires with the exception the connection ended with
        self.lost: Deferred[BaseException | None] = Deferred()

    def readConnectionLost(self) -> None:
        self.eof = True
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost.callback(reason.value)


class WriteNowTests(TestCase):
    async def _pair(self, sender_protocol: type[Protocol] = Protocol) -> tuple[Any, _Sink]:
        accepted: Deferred[_Sink] = Deferred()

        def make_sink() -> _Sink:
            sink = _Sink()
            accepted.callback(sink)
            return sink

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(make_sink)
        )
        self.addCleanup(port.stopListening)
        sender = await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(sender_protocol)
        )
        self.addCleanup(sender.transport.abortConnection)
        return sender, await accepted

    async def test_idle_connection_sends_at_once(self) -> None:
        sender, sink = await self._pair()
        self.assertTrue(write_now(sender.transport, b"hello"), "all sent at once")
        transport: Any = sender.transport
        self.assertEqual((transport.dataBuffer, transport._tempDataBuffer), (b"", []))
        sender.transport.loseConnection()
        self.assertEqual(await sink.done, b"hello")

    async def test_queued_bytes_keep_their_order(self) -> None:
        # 64 MiB cannot fit in the socket buffers at once, so most of it waits in Twisted's
        # buffer; what write_now adds must come after it, byte for byte.
        sender, sink = await self._pair()
        bulk = os.urandom(64 * 1024 * 1024)
        sender.transport.write(bulk)
        for i in range(100):
            self.assertFalse(write_now(sender.transport, b"%d;" % i), "queued behind the bulk")
        sender.transport.loseConnection()
        expected = bulk + b"".join(b"%d;" % i for i in range(100))
        got = await sink.done
        self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(expected).hexdigest())

    async def test_head_and_tail_in_one_gather_write(self) -> None:
        """A header and its payload (the tail) go out together, the payload uncopied; the part
        the socket does not take is queued in order, behind which later writes wait."""
        sender, sink = await self._pair()
        payload = os.urandom(32 * 1024 * 1024)  # more than the socket buffers take at once
        self.assertFalse(write_now(sender.transport, b"head", payload), "part was queued")
        transport: Any = sender.transport
        self.assertGreater(transport._tempDataLen, 0, "the whole tail went at once")
        for i in range(100):
            write_now(sender.transport, b"%d:" % i, b"%d;" % i)
        sender.transport.loseConnection()
        expected = b"head" + payload + b"".join(b"%d:%d;" % (i, i) for i in range(100))
        got = await sink.done
        self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(expected).hexdigest())

    def test_other_transports_get_a_plain_write(self) -> None:
        transport = StringTransport()
        write_now(transport, b"data")
        write_now(transport, b"head", b"tail")
        self.assertEqual(transport.value(), b"dataheadtail")

    async def test_reset_is_never_taken_for_an_eof(self) -> None:
        """The peer reset the connection; write_now's send meets the error first.

        The kernel reports a reset once: swallowed by write_now, it would leave the next read
        returning b"", and the protocol would see a clean EOF after a cut stream (issue 16).
        """
        sender, sink = await self._pair(_Ending)
        sender.transport.pauseProducing()  # so only write_now can meet the reset
        sink.transport.abortConnection()  # SO_LINGER 0: the kernel sends a RST
        await sink.done
        write_now(sender.transport, b"x" * 1000)
        sender.transport.resumeProducing()
        reason = await sender.lost
        self.assertFalse(sender.eof, "the reset was read as an EOF")
        self.assertNotIsInstance(reason, ConnectionDone)
