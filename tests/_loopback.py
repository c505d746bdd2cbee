"""Loopback pieces several test packages share: an echo, a collecting client, and servers on
127.0.0.1 (port 0) that stop at the end of the test.

``listen`` is a bare listener (nothing between the transport and the protocol, so a test sees
the real TCP transport). ``serve`` puts a :class:`TrackingFactory` in between, and its clean-up
waits until every connection has closed, so no test leaves a socket behind for the next one.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, serverFromString
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import alsoProvides

LOOPBACK = "tcp:0:interface=127.0.0.1"


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class Collector(Protocol):
    """Keeps what it receives, and records whether and how the connection ended.

    ``lost`` fires (with None) once the connection has ended; ``reason`` says how.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self.made = False
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self._wanted: tuple[int, Deferred[bytes]] | None = None

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self._check()

    def receive(self, n: int) -> Deferred[bytes]:
        """Fires with the first ``n`` bytes received, once they have arrived."""
        d: Deferred[bytes] = Deferred()
        self._wanted = (n, d)
        self._check()
        return d

    def _check(self) -> None:
        if self._wanted and len(self.data) >= self._wanted[0]:
            (n, d), self._wanted = self._wanted, None
            d.callback(bytes(self.data[:n]))

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.reason = reason
        self.lost.callback(None)


class _Wrapper(ProtocolWrapper):
    """Twisted's ProtocolWrapper, passing half-closes on.

    Twisted's does not, so a service behind it would see the peer's EOF as the end of the
    connection and lose what it had not sent yet.
    """

    def makeConnection(self, transport: Any) -> None:
        # ProtocolWrapper.makeConnection copies the transport's interfaces onto the wrapper;
        # add half-close support afterwards, when the wrapped protocol has it.
        super().makeConnection(transport)
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            alsoProvides(self, IHalfCloseableProtocol)

    def readConnectionLost(self) -> None:
        self.wrappedProtocol.readConnectionLost()  # type: ignore[attr-defined]

    def writeConnectionLost(self) -> None:
        self.wrappedProtocol.writeConnectionLost()  # type: ignore[attr-defined]


class TrackingFactory(WrappingFactory):
    """Wraps a server factory: hands out each accepted protocol (``accepted``), counts them
    (``connections_made``) and can wait until all of its connections have closed."""

    protocol = _Wrapper

    def __init__(self, wrapped: IProtocolFactory) -> None:
        super().__init__(wrapped)
        self.accepted: DeferredQueue[Any] = DeferredQueue()
        self.connections_made = 0
        self._idle: list[Deferred[None]] = []

    def registerProtocol(self, p: Any) -> None:
        super().registerProtocol(p)
        self.connections_made += 1
        self.accepted.put(p.wrappedProtocol)

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def when_idle(self) -> Deferred[None]:
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d


async def listen(test: TestCase, factory: IProtocolFactory) -> int:
    """Listen on 127.0.0.1, port 0; stops listening at the end of the test."""
    port: IListeningPort = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        factory
    )
    test.addCleanup(port.stopListening)
    return port.getHost().port  # type: ignore[attr-defined, no-any-return]


async def serve(
    test: TestCase, where: str | IStreamServerEndpoint, factory: IProtocolFactory
) -> int:
    """Listen on ``where`` (an endpoint or a ``serverFromString`` description) through a
    :class:`TrackingFactory`; the clean-up stops listening and waits until all is closed.

    The tracking wrapper sits *under* any TLS a description adds (Autobahn insists on seeing
    the TLS transport itself); to track outside TLS, pass a TLS factory and a TCP endpoint.
    """
    endpoint = serverFromString(reactor, where) if isinstance(where, str) else where
    tracking = TrackingFactory(factory)
    port: IListeningPort = await endpoint.listen(tracking)

    async def stop() -> None:
        stopped = port.stopListening()
        if stopped is not None:
            await stopped
        await tracking.when_idle()

    test.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return port.getHost().port  # type: ignore[attr-defined, no-any-return]


async def accepting(port: int, timeout: float = 60) -> None:
    """Wait until 127.0.0.1:PORT accepts a connection (a server that logged its URL a moment
    before it listens, or on a loaded machine)."""
    deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
    while True:
        try:
            protocol = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
                Factory.forProtocol(Protocol)
            )
        except ConnectionRefusedError:
            if reactor.seconds() > deadline:  # type: ignore[attr-defined]
                raise
            await deferLater(reactor, 0.1)
            continue
        protocol.transport.loseConnection()
        return
