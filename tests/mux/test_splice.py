"""The splice against Twisted's own FileDescriptor write logic (the part TCP uses)."""

from __future__ import annotations

from twisted.internet.abstract import FileDescriptor
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import TestCase

from nbbridge.mux import ServiceMap, TcpSide

from ._helpers import StringEndpoint, session_pair


class _Descriptor(FileDescriptor):
    """A FileDescriptor whose socket accepts every byte and records the write shutdown."""

    connected = 1

    def __init__(self) -> None:
        super().__init__(MemoryReactor())
        self.sent = b""
        self.shut_down = False

    def writeSomeData(self, data: bytes) -> int:
        self.sent += bytes(data)
        return len(data)

    def _closeWriteConnection(self) -> None:
        self.shut_down = True

    def getPeer(self) -> None:
        return None

    def getHost(self) -> None:
        return None


class SpliceTests(TestCase):
    def test_close_while_producer_paused_still_shuts_down(self) -> None:
        """CLOSE arrives while the connection's buffer is over its limit (channel paused).

        Twisted's doWrite resumes a paused producer *instead of* shutting down the writing
        side; the splice must unregister the channel first or the shutdown never happens.
        """
        a, b, pump = session_pair(ServiceMap({"s": StringEndpoint()}))
        d = a.open("s")
        pump.flush()
        channel = self.successResultOf(d)
        descriptor = _Descriptor()
        tcp = TcpSide()
        tcp.makeConnection(descriptor)
        channel.attach(tcp.channel_protocol())
        ((service, _),) = b._acceptor.services["s"].connections  # type: ignore[attr-defined]
        big = b"x" * (descriptor.bufferSize + 1)
        service.dataReceived(big)  # more than the buffer limit: the channel gets paused
        pump.flush()
        self.assertTrue(descriptor.producerPaused)
        service.readConnectionLost()  # the service is done: CLOSE travels to us
        pump.flush()
        descriptor.doWrite()  # the socket drains the buffer
        self.assertEqual(descriptor.sent, big)
        self.assertTrue(descriptor.shut_down)
