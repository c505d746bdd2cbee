"""Forwarding a TCP connection over a channel: backpressure, half-closes, and resets."""

from __future__ import annotations

from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from nbbridge.mux import ServiceMap, TcpSide

from ._helpers import StringEndpoint, session_pair
from .test_session import opened


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


def reset_by_peer(transport: StringTransport, protocol: Protocol) -> None:
    """What a TCP connection does when its peer resets it: stop its producer, then tell
    its protocol, with ConnectionLost (ECONNRESET)."""
    transport.disconnected = True
    producer = transport.producer
    if producer is not None:
        transport.producer = None
        producer.stopProducing()
    protocol.connectionLost(Failure(ConnectionLost()))


class Forwarded:
    """A forwarded connection on session pair A-B: a user's TcpSide on A, the service's on B."""

    def __init__(self, window: int = 256 * 1024) -> None:
        self.service = StringEndpoint()
        self.a, self.b, self.pump = session_pair(
            ServiceMap({"s": self.service}), window=window, start_window=window
        )
        d = self.a.open("s")
        self.pump.flush()
        self.channel = opened(d)
        self.user_transport = StringTransport()
        self.user = TcpSide(self.channel)
        self.user.makeConnection(self.user_transport)
        ((service_side, self.service_transport),) = self.service.connections
        assert isinstance(service_side, TcpSide)
        self.service_side = service_side
        self.pump.flush()


def aborted(transport: StringTransport) -> bool:
    """Whether abortConnection was called (StringTransport's loseConnection only sets
    ``disconnecting``)."""
    return bool(transport.disconnected)


class ResetTravelsTests(TestCase):
    """A reset on one end becomes a reset on the other; bytes lost are never a FIN (issue 16)."""

    def test_user_reset_resets_the_service(self) -> None:
        f = Forwarded()
        f.user.dataReceived(b"request")
        f.pump.flush()
        reset_by_peer(f.user_transport, f.user)
        f.pump.flush()
        self.assertTrue(aborted(f.service_transport), "the service's connection was closed")
        self.assertFalse(f.b.channels)

    def test_user_reset_with_queued_data_and_no_credit(self) -> None:
        f = Forwarded(window=1024)
        f.user.dataReceived(b"x" * 5000)  # 1024 sent, the rest waits for credit
        self.assertEqual(f.user_transport.producerState, "paused")
        reset_by_peer(f.user_transport, f.user)
        f.pump.flush()
        self.assertTrue(aborted(f.service_transport))
        self.assertEqual(f.service_transport.value(), b"x" * 1024)

    def test_service_reset_resets_a_paused_user(self) -> None:
        f = Forwarded()
        f.channel.pauseProducing()  # the user's connection is full
        f.service_side.dataReceived(b"reply" * 1000)
        f.pump.flush()
        reset_by_peer(f.service_transport, f.service_side)
        f.pump.flush()
        self.assertTrue(aborted(f.user_transport), "the user's connection was closed")
        self.assertEqual(f.user_transport.value(), b"")

    def test_service_reset_after_its_eof(self) -> None:
        """The service half-closed in order, then reset: the user sees the reset too."""
        f = Forwarded()
        f.service_side.dataReceived(b"part")
        f.service_side.readConnectionLost()
        f.pump.flush()
        self.assertTrue(f.user_transport.disconnecting)  # loseWriteConnection: the FIN
        reset_by_peer(f.service_transport, f.service_side)
        f.pump.flush()
        self.assertTrue(aborted(f.user_transport))

    def test_session_lost_aborts_users(self) -> None:
        """Even a session that ended in order (GOAWAY) lost what its channels carried."""
        for end in ("goaway", "dropped"):
            f = Forwarded()
            f.channel.pauseProducing()
            f.service_side.dataReceived(b"queued")
            f.pump.flush()
            if end == "goaway":
                f.b.close("agent stopping")
            else:
                f.a.connectionLost(Failure(ConnectionDone()))
                f.b.connectionLost(Failure(ConnectionDone()))
            f.pump.flush()
            self.assertTrue(aborted(f.user_transport), end)
            self.assertTrue(aborted(f.service_transport), end)

    def test_reset_before_the_channel_is_up(self) -> None:
        """The user reset while its channel was being opened: the channel is reset too."""
        service = StringEndpoint()
        a, _b, pump = session_pair(ServiceMap({"s": service}))
        user_transport = StringTransport()
        user = TcpSide()
        user.makeConnection(user_transport)
        d = a.open("s")
        pump.flush()
        reset_by_peer(user_transport, user)
        opened(d).attach(user.channel_protocol())
        pump.flush()
        ((_, service_transport),) = service.connections
        self.assertTrue(aborted(service_transport))

    def test_orderly_close_stays_orderly(self) -> None:
        """Both ways closed in order: a FIN on each side, no reset."""
        f = Forwarded()
        f.user.readConnectionLost()
        f.service_side.readConnectionLost()
        f.pump.flush()
        f.user.writeConnectionLost()
        f.service_side.writeConnectionLost()
        f.user.connectionLost(Failure(ConnectionDone()))
        f.service_side.connectionLost(Failure(ConnectionDone()))
        f.pump.flush()
        self.assertFalse(aborted(f.user_transport) or aborted(f.service_transport))
        self.assertTrue(f.user_transport.disconnecting and f.service_transport.disconnecting)
