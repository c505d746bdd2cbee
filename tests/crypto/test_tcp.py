"""SecureProtocol over real loopback TCP (127.0.0.1, port 0): what users actually run."""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from nbbridge.crypto import (
    MAX_RECORD_LENGTH,
    TRANSPORT,
    HandshakeComplete,
    HandshakeError,
    Initiator,
    PublicKey,
    Responder,
    SecureChannelError,
    SecureProtocol,
)
from nbbridge.crypto._secure import AUTH_FAILED, KEY_MISMATCH, NOT_AUTHORIZED, TRUNCATED
from tests._loopback import listen

from ._support import Inner, Keys

reactor: Any = _reactor
TEN_MB = 10 * 1024 * 1024


def port_number(port: IListeningPort) -> int:
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    return address.port


class TrackedSecureProtocol(SecureProtocol):
    """Fires `closed` once the TCP connection below is gone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closed: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.closed.callback(None)


class AgentFactory(Factory):
    """Accepts TCP connections and runs an echoing protocol inside each secure channel."""

    def __init__(
        self,
        keys: Keys,
        authorized: Any,
        rekey_interval: int,
        handshake_timeout: float | None = 30.0,
    ) -> None:
        self.keys = keys
        self.authorized = authorized
        self.rekey_interval = rekey_interval
        self.handshake_timeout = handshake_timeout
        self.channels: list[TrackedSecureProtocol] = []
        self.handshakes: list[Deferred[PublicKey]] = []
        self.inners: list[Inner] = []

    def buildProtocol(self, addr: Any) -> TrackedSecureProtocol:
        inner = Inner(echo=True)
        role = Responder(self.keys.agent, self.authorized, rekey_interval=self.rekey_interval)
        channel = TrackedSecureProtocol(inner, role, reactor, self.handshake_timeout)
        self.inners.append(inner)
        self.channels.append(channel)
        self.handshakes.append(channel.handshake)
        return channel


class LoopbackTests(TestCase):
    def start_agent(
        self, keys: Keys, authorized: Any = None, rekey_interval: int = 1 << 20
    ) -> Deferred[IListeningPort]:
        self.factory = AgentFactory(
            keys, keys.authorized if authorized is None else authorized, rekey_interval
        )
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        d: Deferred[IListeningPort] = endpoint.listen(self.factory)
        return d

    async def connect(
        self, port: IListeningPort, keys: Keys, pinned: PublicKey, rekey_interval: int = 1 << 20
    ) -> tuple[TrackedSecureProtocol, Inner]:
        inner = Inner()
        channel = TrackedSecureProtocol(
            inner, Initiator(keys.client, pinned, rekey_interval=rekey_interval), reactor
        )
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port_number(port))
        await connectProtocol(endpoint, channel)
        self.addCleanup(self.wait_closed, channel, port)
        return channel, inner

    async def _wait_closed(self, channel: TrackedSecureProtocol, port: IListeningPort) -> None:
        if channel.transport is not None:
            channel.transport.loseConnection()
        await channel.closed
        for agent_side in self.factory.channels:
            if agent_side.transport is not None:
                agent_side.transport.loseConnection()
        await DeferredList([c.closed for c in self.factory.channels])
        for handshake in self.factory.handshakes:
            handshake.addErrback(lambda f: None)
        await maybeDeferred(port.stopListening)

    def wait_closed(self, channel: TrackedSecureProtocol, port: IListeningPort) -> Deferred[None]:
        """tearDown: every connection closed and the port shut before the next test."""
        return Deferred.fromCoroutine(self._wait_closed(channel, port))

    async def test_ten_megabytes_round_trip(self) -> None:
        keys = Keys()
        port = await self.start_agent(keys)
        channel, inner = await self.connect(port, keys, keys.agent.public_key)
        self.assertEqual(await channel.handshake, keys.agent.public_key)
        self.assertEqual(await self.factory.handshakes[0], keys.client.public_key)
        data = os.urandom(TEN_MB)
        inner.expect = TEN_MB
        assert inner.transport is not None
        for start in range(0, TEN_MB, 65536):
            inner.transport.write(data[start : start + 65536])
        echoed = await inner.got_all
        self.assertEqual(len(echoed), TEN_MB)
        self.assertEqual(hashlib.sha256(echoed).digest(), hashlib.sha256(data).digest())
        self.assertEqual(bytes(self.factory.inners[0].received), data)
        peer = channel.getPeer()
        assert isinstance(peer, IPv4Address)
        self.assertEqual(peer.host, "127.0.0.1")

    async def test_rekey_crossing(self) -> None:
        """A small rekey interval: many rekeys each way during one transfer."""
        keys = Keys()
        port = await self.start_agent(keys, rekey_interval=5)
        channel, inner = await self.connect(port, keys, keys.agent.public_key, rekey_interval=5)
        await channel.handshake
        data = os.urandom(1024 * 1024)
        inner.expect = len(data)
        assert inner.transport is not None
        for start in range(0, len(data), 8192):
            inner.transport.write(data[start : start + 8192])
            if start % (64 * 1024) == 0:
                await self.next_turn()  # cut into many records, each direction
        self.assertEqual(await inner.got_all, data)
        self.assertGreaterEqual(channel._role._sent, 16)

    async def next_turn(self) -> None:
        await deferLater(reactor, 0, lambda: None)

    async def test_unauthorized_client(self) -> None:
        keys = Keys()
        port = await self.start_agent(keys, authorized=lambda key: False)
        channel, inner = await self.connect(port, keys, keys.agent.public_key)
        with self.assertRaises(HandshakeError) as caught:
            await channel.handshake
        self.assertEqual(
            caught.exception.reason,
            f"refused by the agent: {NOT_AUTHORIZED} (unauthenticated message)",
        )
        with self.assertRaises(HandshakeError) as agent_side:
            await self.factory.handshakes[0]
        self.assertEqual(
            agent_side.exception.reason, f"client key {keys.client.public_key} is not authorized"
        )
        await channel.closed
        self.assertFalse(inner.made.called)
        self.assertFalse(self.factory.inners[0].made.called)

    async def test_wrong_pinned_key(self) -> None:
        keys = Keys()
        port = await self.start_agent(keys)
        channel, inner = await self.connect(port, keys, keys.stranger.public_key)
        with self.assertRaises(HandshakeError) as caught:
            await channel.handshake
        self.assertIn(KEY_MISMATCH, caught.exception.reason)
        with self.assertRaises(HandshakeError) as agent_side:
            await self.factory.handshakes[0]
        self.assertIn("pinned a different agent key", agent_side.exception.reason)
        await channel.closed
        self.assertFalse(inner.made.called)

    async def test_agent_side_close(self) -> None:
        keys = Keys()
        port = await self.start_agent(keys)
        channel, inner = await self.connect(port, keys, keys.agent.public_key)
        await channel.handshake
        await self.factory.handshakes[0]
        agent_inner = self.factory.inners[0]
        assert agent_inner.transport is not None
        agent_inner.transport.write(b"bye")
        agent_inner.transport.loseConnection()
        await inner.lost
        self.assertEqual(bytes(inner.received), b"bye")


class RawClient(Protocol):
    """A client speaking the sans-IO Initiator straight over TCP, so tests can misbehave."""

    def __init__(self, session: Initiator) -> None:
        self.session = session
        self.ready: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.session.start())

    def dataReceived(self, data: bytes) -> None:
        events = self.session.receive_data(data)
        assert self.transport is not None
        self.transport.write(self.session.data_to_send())  # the confirmation record
        for event in events:
            if isinstance(event, HandshakeComplete):
                self.ready.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


class Replayer(Protocol):
    """Someone who captured a client's first handshake message (the relay, or on path)."""

    def __init__(self, captured: bytes) -> None:
        self.captured = captured
        self.received = bytearray()
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.captured)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


class ReplayTests(TestCase):
    """A replayed first message gets an answer but never a session, and is dropped soon."""

    async def test_replayed_first_message_is_dropped_after_the_deadline(self) -> None:
        keys = Keys()
        factory = AgentFactory(keys, keys.authorized, 1 << 20, handshake_timeout=0.5)
        port = await listen(self, factory)
        # The message a real client sent: it needs the client's key to make, not to replay.
        captured = Initiator(keys.client, keys.agent.public_key).start()
        replayer = Replayer(captured)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), replayer)
        await replayer.closed  # the agent hung up by itself
        self.assertEqual(replayer.received[4], 1)  # it did answer with a HANDSHAKE record
        with self.assertRaises(HandshakeError) as agent_side:
            await factory.handshakes[0]
        self.assertIn(
            f"the first record from the client claiming key {keys.client.public_key} did not "
            "come within 0.5 s of the handshake",
            agent_side.exception.reason,
        )
        self.assertFalse(factory.inners[0].made.called)
        await factory.channels[0].closed

    async def test_idle_honest_client_is_confirmed_at_once(self) -> None:
        """A client that has nothing to say is still confirmed, long before the deadline."""
        keys = Keys()
        factory = AgentFactory(keys, keys.authorized, 1 << 20, handshake_timeout=30.0)
        port = await listen(self, factory)
        inner = Inner()
        channel = TrackedSecureProtocol(
            inner, Initiator(keys.client, keys.agent.public_key), reactor
        )
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), channel)
        # Nothing is ever written inside the channel, yet the agent counts the client in.
        self.assertEqual(await factory.handshakes[0], keys.client.public_key)
        self.assertTrue(factory.inners[0].made.called)
        assert channel.transport is not None
        channel.transport.loseConnection()
        await DeferredList([channel.closed, factory.channels[0].closed])


class MisbehavingClientTests(TestCase):
    """Altered records reach a real agent over TCP: it ends the session with the reason."""

    async def agent_and_client(self) -> tuple[RawClient, Inner]:
        keys = Keys()
        factory = AgentFactory(keys, keys.authorized, 1 << 20)
        port = await listen(self, factory)
        client = RawClient(Initiator(keys.client, keys.agent.public_key))
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        await connectProtocol(endpoint, client)
        await client.ready
        await factory.handshakes[0]
        self.factory = factory
        return client, factory.inners[0]

    async def assert_ended(self, client: RawClient, inner: Inner, reason: str) -> None:
        await inner.lost
        assert inner.reason is not None
        self.assertIsInstance(inner.reason.value, SecureChannelError)
        self.assertEqual(inner.reason.value.reason, reason)
        await client.closed  # the agent hung up
        await self.factory.channels[0].closed

    def send(self, client: RawClient, data: bytes) -> None:
        assert client.transport is not None
        client.transport.write(data)

    async def test_tampered(self) -> None:
        client, inner = await self.agent_and_client()
        wire = bytearray(client.session.encrypt(b"hello agent"))
        wire[-3] ^= 0x10
        self.send(client, bytes(wire))
        await self.assert_ended(client, inner, AUTH_FAILED)
        self.assertEqual(bytes(inner.received), b"")

    async def test_replayed(self) -> None:
        client, inner = await self.agent_and_client()
        wire = client.session.encrypt(b"once")
        self.send(client, wire + wire)
        await self.assert_ended(client, inner, AUTH_FAILED)
        self.assertEqual(bytes(inner.received), b"once")

    async def test_reordered(self) -> None:
        client, inner = await self.agent_and_client()
        first, second = client.session.encrypt(b"first"), client.session.encrypt(b"second")
        self.send(client, second + first)
        await self.assert_ended(client, inner, AUTH_FAILED)

    async def test_truncated(self) -> None:
        client, inner = await self.agent_and_client()
        self.send(client, client.session.encrypt(b"a whole sentence")[:-4])
        assert client.transport is not None
        client.transport.loseConnection()
        await self.assert_ended(client, inner, TRUNCATED)

    async def test_oversize_record(self) -> None:
        client, inner = await self.agent_and_client()
        self.send(client, struct.pack(">IB", MAX_RECORD_LENGTH + 1, TRANSPORT))
        await self.assert_ended(
            client,
            inner,
            f"record of {MAX_RECORD_LENGTH + 1} bytes is larger than the "
            f"{MAX_RECORD_LENGTH}-byte limit",
        )
