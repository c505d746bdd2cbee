"""Shared pieces for mux tests: session pairs over in-memory pipes and real loopback TCP."""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from nbbridge.mux import Acceptor, MuxSession
from tests._loopback import Collector


def session_pair(
    acceptor: Acceptor | None = None, **kwargs: Any
) -> tuple[MuxSession, MuxSession, iosim.IOPump]:
    """An initiator and a responder joined by iosim's in-memory transports."""
    a = MuxSession(initiator=True, label="A", **kwargs)
    b = MuxSession(initiator=False, acceptor=acceptor, label="B", **kwargs)
    pump = iosim.connect(b, iosim.makeFakeServer(b), a, iosim.makeFakeClient(a), greet=False)
    pump.flush()
    return a, b, pump


def lost_reason(test: TestCase, collector: Collector) -> Failure:
    """How the collector's connection ended (it must have ended already)."""
    test.successResultOf(collector.lost)
    assert collector.reason is not None
    return collector.reason


@implementer(IHalfCloseableProtocol)
class HalfCloseEcho(Protocol):
    """Echoes, and closes its writing side when the peer closes its own (like `cat`)."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


@implementer(IHalfCloseableProtocol)
class HashSink(Protocol):
    """Hashes everything it receives; replies with the digest once the peer half-closes."""

    def connectionMade(self) -> None:
        self.hash = hashlib.sha256()
        self.count = 0

    def dataReceived(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)

    def readConnectionLost(self) -> None:
        self.transport.write(f"{self.count} {self.hash.hexdigest()}".encode())  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


def tcp_endpoint(port: int) -> TCP4ClientEndpoint:
    return TCP4ClientEndpoint(reactor, "127.0.0.1", port)


@implementer(IStreamClientEndpoint)
class StringEndpoint:
    """An in-memory 'service': connect() puts the protocol on a StringTransport.

    The test plays the service: it reads ``transport.value()`` and calls
    ``protocol.dataReceived`` to answer.
    """

    def __init__(self) -> None:
        self.connections: list[tuple[Protocol, Any]] = []

    def connect(self, factory: Factory) -> Deferred[Protocol]:
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)
