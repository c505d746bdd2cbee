"""SecureProtocol over in-memory transports (iosim, StringTransport): protocol logic."""

from __future__ import annotations

import os
import struct

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from nbbridge.crypto import (
    MAX_PLAINTEXT,
    MAX_RECORD_LENGTH,
    TRANSPORT,
    HandshakeError,
    Initiator,
    PublicKey,
    Responder,
    SecureChannelError,
    SecureProtocol,
)
from nbbridge.crypto._secure import AUTH_FAILED, KEY_MISMATCH, NOT_AUTHORIZED, TRUNCATED

from ._support import Inner, Keys, split_records


def record_lengths(data: bytes) -> list[int]:
    """The length field of each record in DATA."""
    return [len(record) - 4 for record in split_records(data)]


class Harness:
    """A client and an agent SecureProtocol joined by an iosim pump."""

    def __init__(
        self,
        test: SynchronousTestCase,
        *,
        authorized: bool = True,
        pin_stranger: bool = False,
        rekey_interval: int = 1 << 20,
        echo: bool = False,
    ) -> None:
        self.keys = Keys()
        self.clock = Clock()
        pinned = (self.keys.stranger if pin_stranger else self.keys.agent).public_key
        allowed = self.keys.authorized if authorized else (lambda key: False)
        self.client_inner = Inner()
        self.agent_inner = Inner(echo=echo)
        self.client = SecureProtocol(
            self.client_inner,
            Initiator(self.keys.client, pinned, rekey_interval=rekey_interval),
            self.clock,
        )
        self.agent = SecureProtocol(
            self.agent_inner,
            Responder(self.keys.agent, allowed, rekey_interval=rekey_interval),
            self.clock,
        )
        self.client_io = FakeTransport(self.client, isServer=False)
        self.agent_io = FakeTransport(self.agent, isServer=True)
        self.client_handshake = self.client.handshake
        self.agent_handshake = self.agent.handshake
        # A test that does not look at a failed handshake must not leak an unhandled error.
        test.addCleanup(self.client_handshake.addErrback, lambda f: None)
        test.addCleanup(self.agent_handshake.addErrback, lambda f: None)
        self.pump: IOPump = connect(
            self.agent, self.agent_io, self.client, self.client_io, greet=False, clock=self.clock
        )

    def flush(self) -> None:
        self.pump.flush()

    def client_transport(self) -> ITransport:
        assert self.client_inner.transport is not None
        return self.client_inner.transport

    def agent_transport(self) -> ITransport:
        assert self.agent_inner.transport is not None
        return self.agent_inner.transport

    def disconnect_agent_side(self) -> None:
        """The byte stream into the agent ends (as if the peer vanished)."""
        self.agent_io.disconnecting = True
        self.agent_io.disconnected = True
        self.agent.connectionLost(Failure(ConnectionDone()))


class HandshakeTests(SynchronousTestCase):
    def test_handshake(self) -> None:
        h = Harness(self)
        self.assertFalse(h.agent_inner.made.called)
        h.flush()
        self.assertEqual(self.successResultOf(h.client_handshake), h.keys.agent.public_key)
        self.assertEqual(self.successResultOf(h.agent_handshake), h.keys.client.public_key)
        self.assertEqual(h.client.remote_static, h.keys.agent.public_key)
        self.assertEqual(h.agent.remote_static, h.keys.client.public_key)
        self.assertEqual(h.client.handshake_hash, h.agent.handshake_hash)
        self.assertIs(h.client_inner.transport, h.client)
        self.assertTrue(h.agent_inner.made.called)

    def test_provides_transport(self) -> None:
        h = Harness(self)
        h.flush()
        verifyObject(ITransport, h.client)
        verifyObject(IConsumer, h.client)
        verifyObject(IPushProducer, h.client)
        self.assertIs(h.client.getPeer(), h.client_io.getPeer())
        self.assertIs(h.client.getHost(), h.client_io.getHost())

    def test_inner_waits_for_handshake(self) -> None:
        """The inner protocol is connected only once the peer is proven."""
        h = Harness(self)
        h.pump.pump()  # message 1 reaches the agent, which answers at once
        self.assertFalse(h.agent_inner.made.called)  # ...but the client has proven nothing yet
        self.assertFalse(h.client_inner.made.called)
        h.pump.pump()  # message 2 reaches the client, which confirms at once
        self.assertTrue(h.client_inner.made.called)
        self.assertFalse(h.agent_inner.made.called)
        self.assertNoResult(h.agent_handshake)
        h.flush()
        self.assertTrue(h.agent_inner.made.called)

    def test_handshake_after_completion_fires_later(self) -> None:
        h = Harness(self)
        h.flush()
        d = h.client.handshake
        self.assertNoResult(d)
        h.clock.advance(0)
        self.assertEqual(self.successResultOf(d), h.keys.agent.public_key)

    def test_unauthorized(self) -> None:
        h = Harness(self, authorized=False)
        h.flush()
        agent_error = self.failureResultOf(h.agent_handshake, HandshakeError)
        self.assertEqual(
            agent_error.value.reason, f"client key {h.keys.client.public_key} is not authorized"
        )
        client_error = self.failureResultOf(h.client_handshake, HandshakeError)
        self.assertEqual(
            client_error.value.reason,
            f"refused by the agent: {NOT_AUTHORIZED} (unauthenticated message)",
        )
        self.assertFalse(h.client_inner.made.called)
        self.assertFalse(h.agent_inner.made.called)
        self.assertTrue(h.agent_io.disconnected and h.client_io.disconnected)
        self.assertIsNone(h.client.remote_static)

    def test_wrong_pinned_key(self) -> None:
        h = Harness(self, pin_stranger=True)
        h.flush()
        client_error = self.failureResultOf(h.client_handshake, HandshakeError)
        self.assertIn(KEY_MISMATCH, client_error.value.reason)
        self.assertIn("unauthenticated", client_error.value.reason)
        agent_error = self.failureResultOf(h.agent_handshake, HandshakeError)
        self.assertIn("pinned a different agent key", agent_error.value.reason)
        self.assertTrue(h.client_io.disconnected)

    def test_agent_closes_before_handshake(self) -> None:
        h = Harness(self)
        h.agent_io.loseConnection()
        h.flush()
        error = self.failureResultOf(h.client_handshake, HandshakeError)
        self.assertIn("connection closed before the handshake finished", error.value.reason)

    def test_handshake_timeout(self) -> None:
        keys = Keys()
        clock = Clock()
        inner = Inner()
        proto = SecureProtocol(
            inner, Responder(keys.agent, keys.authorized), clock, handshake_timeout=5
        )
        transport = StringTransport()
        proto.makeConnection(transport)
        d = proto.handshake
        clock.advance(4)
        self.assertNoResult(d)
        clock.advance(1)
        clock.advance(0)
        self.assertEqual(
            self.failureResultOf(d, HandshakeError).value.reason, "handshake timed out after 5 s"
        )
        self.assertTrue(transport.disconnecting)

    def test_replayed_first_message_times_out_unconnected(self) -> None:
        """A replayed message 1 is answered, but the inner protocol never starts, and the
        stream is closed at the deadline with a reason naming the claimed key."""
        keys = Keys()
        clock = Clock()
        inner = Inner()
        proto = SecureProtocol(
            inner, Responder(keys.agent, keys.authorized), clock, handshake_timeout=3
        )
        transport = StringTransport()
        proto.makeConnection(transport)
        d = proto.handshake
        proto.dataReceived(Initiator(keys.client, keys.agent.public_key).start())
        self.assertNotEqual(transport.value(), b"")  # message 2 went out
        clock.advance(2.9)
        self.assertNoResult(d)
        self.assertFalse(inner.made.called)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        clock.advance(0)
        reason = self.failureResultOf(d, HandshakeError).value.reason
        self.assertIn(f"client claiming key {keys.client.public_key}", reason)
        self.assertIn("did not come within 3 s of the handshake", reason)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(inner.made.called)
        self.assertIsNone(proto.remote_static)

    def test_no_timeout_after_handshake(self) -> None:
        h = Harness(self)
        h.flush()
        h.clock.advance(3600)
        self.assertFalse(h.client_io.disconnecting)
        self.assertEqual(h.clock.getDelayedCalls(), [])


class DataTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self, echo=True)
        self.h.flush()

    def test_round_trip(self) -> None:
        data = os.urandom(3 * MAX_PLAINTEXT + 1234)
        for start in range(0, len(data), 65536):
            self.h.client_transport().write(data[start : start + 65536])
        self.h.flush()
        self.assertEqual(bytes(self.h.agent_inner.received), data)
        self.assertEqual(bytes(self.h.client_inner.received), data)

    def test_write_sequence(self) -> None:
        self.h.client_transport().writeSequence([b"a", b"b", b"c"])
        self.h.flush()
        self.assertEqual(bytes(self.h.agent_inner.received), b"abc")

    def test_small_writes_coalesce(self) -> None:
        """The first write of a turn goes at once; the rest of the turn's writes as one."""
        for n in range(100):
            self.h.client_transport().write(b"%d," % n)
        first = self.h.client_io.getOutBuffer()
        self.assertEqual(record_lengths(first), [1 + 2 + 16])  # "0," went out at once
        self.h.clock.advance(0)
        wire = first + self.h.client_io.getOutBuffer()
        self.assertEqual(len(record_lengths(wire)), 2)
        self.h.agent_io.bufferReceived(wire)
        self.assertEqual(
            bytes(self.h.agent_inner.received), b"".join(b"%d," % n for n in range(100))
        )

    def test_full_buffer_flushes_at_once(self) -> None:
        self.h.client_transport().write(b"first")  # goes at once; the turn has begun
        self.h.client_io.getOutBuffer()
        self.h.client_transport().write(bytes(MAX_PLAINTEXT - 1))
        self.assertEqual(self.h.client_io.stream, [])
        self.h.client_transport().write(b"xy")
        wire = self.h.client_io.getOutBuffer()
        # Sent at once, as records of at most 1 MiB of plaintext.
        self.assertEqual(record_lengths(wire), [1 + MAX_PLAINTEXT + 16, 1 + 1 + 16])
        self.h.clock.advance(0)
        self.assertFalse(self.h.client_io.getOutBuffer())

    def test_lose_connection_flushes_first(self) -> None:
        transport = self.h.client_transport()
        transport.write(b"last words")
        transport.loseConnection()
        transport.write(b"ignored")
        self.h.flush()
        self.assertEqual(bytes(self.h.agent_inner.received), b"last words")
        self.h.flush()
        self.assertIsNotNone(self.h.client_inner.reason)
        self.assertIsNotNone(self.h.agent_inner.reason)
        assert self.h.agent_inner.reason is not None
        self.assertIsInstance(self.h.agent_inner.reason.value, ConnectionDone)

    def test_clean_close_reason_passes_through(self) -> None:
        self.h.agent_transport().loseConnection()
        self.h.flush()
        assert self.h.client_inner.reason is not None
        self.assertIsInstance(self.h.client_inner.reason.value, ConnectionDone)

    def test_rekey_crossing(self) -> None:
        h = Harness(self, rekey_interval=3, echo=True)
        h.flush()
        sent = b""
        for n in range(25):
            chunk = os.urandom(n * 100 + 1)
            sent += chunk
            h.client_transport().write(chunk)
            h.flush()  # one record per turn and direction
        self.assertEqual(bytes(h.agent_inner.received), sent)
        self.assertEqual(bytes(h.client_inner.received), sent)
        self.assertGreater(h.agent._role._received, 3 * 7)

    def test_abort(self) -> None:
        self.h.client_transport().write(b"sent,")  # the turn's first write goes at once
        self.h.client_transport().write(b"dropped")  # this one waits for the turn's end
        self.h.client.abortConnection()
        self.h.flush()
        self.assertNotIn(b"dropped", bytes(self.h.agent_inner.received))
        self.assertIsNotNone(self.h.agent_inner.reason)


class AttackTests(SynchronousTestCase):
    """What reaches the agent is altered in transit: the session ends with the reason."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.flush()

    def wire_for(self, data: bytes) -> bytes:
        self.h.client_transport().write(data)
        self.h.clock.advance(0)
        return self.h.client_io.getOutBuffer()

    def assertEnded(self, reason: str) -> None:
        inner = self.h.agent_inner
        self.assertIsNotNone(inner.reason)
        assert inner.reason is not None
        inner.reason.trap(SecureChannelError)
        self.assertEqual(inner.reason.value.reason, reason)
        self.assertTrue(self.h.agent_io.disconnecting)
        errors = self.flushLoggedErrors()
        self.assertEqual(errors, [])

    def test_tampered(self) -> None:
        wire = bytearray(self.wire_for(b"transfer 10 EUR"))
        wire[-20] ^= 0x04
        self.h.agent_io.bufferReceived(bytes(wire))
        self.assertEqual(bytes(self.h.agent_inner.received), b"")
        self.assertEnded(AUTH_FAILED)

    def test_replayed(self) -> None:
        wire = self.wire_for(b"once")
        self.h.agent_io.bufferReceived(wire)
        self.assertEqual(bytes(self.h.agent_inner.received), b"once")
        self.h.agent_io.bufferReceived(wire)
        self.assertEqual(bytes(self.h.agent_inner.received), b"once")
        self.assertEnded(AUTH_FAILED)

    def test_reordered(self) -> None:
        first, second = self.wire_for(b"first"), self.wire_for(b"second")
        self.h.agent_io.bufferReceived(second + first)
        self.assertEqual(bytes(self.h.agent_inner.received), b"")
        self.assertEnded(AUTH_FAILED)

    def test_truncated(self) -> None:
        wire = self.wire_for(b"complete sentence")
        self.h.agent_io.bufferReceived(wire[:-5])
        self.assertIsNone(self.h.agent_inner.reason)
        self.h.disconnect_agent_side()
        self.assertEnded(TRUNCATED)

    def test_oversize_record(self) -> None:
        self.h.agent_io.bufferReceived(struct.pack(">IB", MAX_RECORD_LENGTH + 1, TRANSPORT))
        self.assertEnded(
            f"record of {MAX_RECORD_LENGTH + 1} bytes is larger than the "
            f"{MAX_RECORD_LENGTH}-byte limit"
        )

    def test_later_writes_are_dropped(self) -> None:
        wire = bytearray(self.wire_for(b"x"))
        wire[-1] ^= 1
        self.h.agent_io.bufferReceived(bytes(wire))
        self.h.agent.write(b"after the end")
        self.h.clock.advance(0)
        self.assertFalse(self.h.agent_io.getOutBuffer())


@implementer(IPushProducer)
class Producer:
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class ProducerTests(SynchronousTestCase):
    """Flow control passes straight through to the byte transport below."""

    def setUp(self) -> None:
        keys = Keys()
        self.clock = Clock()
        self.inner = Inner()
        self.below = StringTransport()
        self.proto = SecureProtocol(
            self.inner, Initiator(keys.client, keys.agent.public_key), self.clock
        )
        self.proto.makeConnection(self.below)

    def test_register_unregister(self) -> None:
        producer = Producer()
        self.proto.registerProducer(producer, True)
        self.assertIs(self.below.producer, producer)
        self.assertTrue(self.below.streaming)
        self.proto.unregisterProducer()
        self.assertIsNone(self.below.producer)

    def test_pause_resume_stop(self) -> None:
        self.proto.pauseProducing()
        self.assertEqual(self.below.producerState, "paused")
        self.proto.resumeProducing()
        self.assertEqual(self.below.producerState, "producing")
        self.proto.stopProducing()
        self.assertEqual(self.below.producerState, "stopped")

    def test_initiator_speaks_first(self) -> None:
        self.assertEqual(record_lengths(self.below.value()), [1 + 96])

    def test_unconnected(self) -> None:
        keys = Keys()
        proto = SecureProtocol(Inner(), Responder(keys.agent, keys.authorized), self.clock)
        self.assertRaises(RuntimeError, proto.getPeer)


class KeyTypeTests(SynchronousTestCase):
    def test_handshake_result_type(self) -> None:
        h = Harness(self)
        h.flush()
        self.assertIsInstance(self.successResultOf(h.client_handshake), PublicKey)
