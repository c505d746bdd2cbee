"""A reset that Twisted's epoll reactor reports as a clean EOF is still forwarded as a reset.

Issue 16: a stream cut by a fault ended with a clean EOF at the other end. Twisted's epoll
reactor takes a hang-up event without "readable" on a descriptor it reads for a clean EOF; the
event may be stale, taken while the descriptor was registered for writing only (its reading
paused by flow control), with reading resumed by an earlier event of the same batch (the
channel got credit). The peer's reset then looked like an EOF, and the forward sent CLOSE.

This needs the real epoll reactor and a real socket: the pieces are put in the failing order
(the resuming event is ready before the reset), so the test is deterministic.
"""

from __future__ import annotations

import os
import select
import socket
import struct
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from nbbridge.mux import TcpSide


class FakeChannel:
    """Records how the TCP side ends the channel; ``ended`` fires with "reset" or "close"."""

    lost = False

    def __init__(self) -> None:
        self.received = b""
        self.ended: Deferred[str] = Deferred()

    def write(self, data: bytes) -> None:
        self.received += data

    def _end(self, how: str) -> None:
        if not self.ended.called:
            self.ended.callback(how)

    def abortConnection(self) -> None:
        self._end("reset")

    def loseWriteConnection(self) -> None:
        self._end("close")

    def loseConnection(self) -> None:
        self._end("close")

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IReadDescriptor)
class ResumeOnEvent:
    """A pipe whose readiness resumes reading ``transport`` (as a WINDOW frame would)."""

    def __init__(self, transport: Any) -> None:
        self.r, self.w = os.pipe()
        self.transport = transport

    def fileno(self) -> int:
        return self.r

    ran = False

    def doRead(self) -> None:
        self.ran = True
        os.read(self.r, 1)
        reactor.removeReader(self)  # type: ignore[attr-defined]
        self.transport.resumeProducing()

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return "resume-on-event"

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class StaleHangUpTests(TestCase):
    async def test_reset_seen_as_eof_by_the_reactor_resets_the_channel(self) -> None:
        """The service resets while its reading is paused and resumed in the same batch."""
        if type(reactor).__name__ != "EPollReactor":
            raise SkipTest("the stale hang-up event is an epoll reactor's")
        side = TcpSide()
        made: Deferred[None] = Deferred()
        side.connectionMade = lambda: (TcpSide.connectionMade(side), made.callback(None))  # type: ignore[method-assign]
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: side)
        )
        self.addCleanup(port.stopListening)
        peer = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(peer.close)
        await made
        channel = FakeChannel()
        side.joined(channel)  # type: ignore[arg-type]
        transport: Any = side.transport
        transport.pauseProducing()  # the channel is out of credit: not reading
        transport.write(b"x" * 32 * 1024 * 1024)  # the peer never reads: writing only
        peer.sendall(b"y" * 1000)  # bytes queued for us when the peer resets
        # Settle the connection: once its send buffer is full and the reactor has polled
        # since, it is on no ready list, so the resuming event is ready before the reset.
        while select.select([], [transport.fileno()], [], 0)[1]:
            await deferLater(reactor, 0, lambda: None)
        for _ in range(3):
            await deferLater(reactor, 0, lambda: None)
        resume = ResumeOnEvent(transport)
        self.addCleanup(resume.close)
        reactor.addReader(resume)  # type: ignore[attr-defined]
        os.write(resume.w, b"!")  # ready first, in the same epoll batch as...
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # ...the reset
        how = await channel.ended
        self.assertTrue(resume.ran, "the resuming event did not come first")
        self.assertEqual(how, "reset", f"a reset reached the channel as a clean close ({how})")
