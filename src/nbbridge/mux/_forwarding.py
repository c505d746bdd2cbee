"""Join a TCP connection (or any ITCPTransport) and a channel, with backpressure both ways.

Each side is the other's producer: when the TCP connection's send buffer is full it pauses
the channel (which then stops granting credit to the peer), and when the channel runs out
of credit it pauses the TCP connection's reading. Half-closes travel across: an EOF read on
one side becomes a write-shutdown on the other. An abort on one side aborts the other, so a
broken transfer is never mistaken for a complete one.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nbbridge._internals import write_now
from nbbridge._tuning import tune

from ._channel import Channel


def _clean(reason: Failure) -> bool:
    """Whether a connection ended in order (FIN); anything else lost bytes in flight."""
    return reason.check(ConnectionDone) is not None


#: How a TcpSide's connection ended (its ``_gone``): not yet, closed in order, or not.
_OPEN, _CLOSED, _RESET = 0, 1, 2


class _Slotted(Protocol):
    """A protocol with ``__slots__``, down to the attributes Twisted sets on it.

    Each end of a tunnelled connection keeps two of these while it is open, thousands of
    connections at a time. The instance dict of a plain Protocol, materialized once
    ``makeConnection`` sets ``transport``, costs some 200 bytes more than the slots. The
    slots shadow the base class's class attributes ``transport`` and ``connected``, so
    they are set here.
    """

    __slots__ = ("connected", "transport")

    def __init__(self) -> None:
        self.transport = None
        self.connected = 0


@implementer(IHalfCloseableProtocol)
class _ChannelSide(_Slotted):
    """Sits on the channel; writes what the peer sends into the TCP connection."""

    __slots__ = ("_tcp",)

    def __init__(self, tcp: TcpSide) -> None:
        super().__init__()
        self._tcp = tcp

    def connectionMade(self) -> None:
        channel = self.transport
        assert isinstance(channel, Channel)
        self._tcp.joined(channel)

    def dataReceived(self, data: bytes) -> None:
        write_now(self._tcp.transport, data)

    def readConnectionLost(self) -> None:
        self._tcp.peer_closed_writing()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._tcp.channel_lost(reason)


@implementer(IHalfCloseableProtocol)
class TcpSide(_Slotted):
    """Sits on the TCP connection; writes what it reads into the channel."""

    __slots__ = ("_gone", "_read_done", "_write_done", "channel")

    _log = Logger()

    def __init__(self, channel: Channel | None = None) -> None:
        super().__init__()
        self.channel = channel
        self._read_done = False
        self._write_done = False
        self._gone = _OPEN

    def channel_protocol(self) -> Protocol:
        """The protocol to attach to this connection's channel."""
        return _ChannelSide(self)

    def joined(self, channel: Channel) -> None:
        """The channel is attached: carry data both ways from now on."""
        self.channel = channel
        tcp = self.transport
        if channel.lost:
            # The open was given up while this connection was being made (the peer reset
            # it, or the session ended): the connection has nothing to carry.
            if tcp is not None and not self._gone:
                tcp.abortConnection()  # type: ignore[attr-defined]
            return
        if self._gone or tcp is None:
            # The connection ended before the channel was up: end the channel the same way.
            if self._gone == _RESET:
                channel.abortConnection()
            else:
                channel.loseConnection()
            return
        channel.registerProducer(tcp, True)  # type: ignore[arg-type]
        tcp.registerProducer(channel, True)  # type: ignore[attr-defined]
        tcp.resumeProducing()  # type: ignore[attr-defined]

    def connectionMade(self) -> None:
        channel = self.channel
        tune(self.transport)
        # Read nothing until there is a channel to send it to.
        self.transport.pauseProducing()  # type: ignore[union-attr]
        if channel is not None:
            channel.attach(self.channel_protocol())

    def dataReceived(self, data: bytes) -> None:
        if self.channel is not None:
            self.channel.write(data)

    def readConnectionLost(self) -> None:
        self._read_done = True
        if self.channel is not None:
            self.channel.loseWriteConnection()
        self._maybe_close()

    def writeConnectionLost(self) -> None:
        self._write_done = True
        self._maybe_close()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._gone = _CLOSED if _clean(reason) else _RESET
        channel = self.channel
        if channel is None or channel.lost:
            return
        if _clean(reason):
            channel.loseConnection()
        else:
            channel.abortConnection()

    def peer_closed_writing(self) -> None:
        """The channel's peer sent CLOSE: shut down our writing side after the buffer."""
        transport: Any = self.transport
        if self._gone or transport is None:
            return
        # The channel will deliver nothing more, so it stops being this connection's producer:
        # Twisted resumes a paused producer instead of shutting down the writing side, so
        # leaving it registered could keep the shutdown from ever happening.
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        if hasattr(transport, "loseWriteConnection"):
            transport.loseWriteConnection()
        else:
            transport.loseConnection()

    def channel_lost(self, reason: Failure) -> None:
        """The channel ended: close the TCP connection the same way (cleanly or not)."""
        if self._gone or self.transport is None:
            return
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
        if _clean(reason):
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _maybe_close(self) -> None:
        # With half-close, Twisted leaves closing the socket to us once both ways are done.
        if self._read_done and self._write_done and self.transport is not None:
            self.transport.loseConnection()


class SpliceFactory(Factory):
    """Builds the TCP side for a channel that already exists (the accepting end)."""

    noisy = False

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def buildProtocol(self, addr: IAddress | None) -> TcpSide:
        return TcpSide(self._channel)


class ForwardCounters:
    """What one forward has carried: connections open and in all, bytes each way.

    Counted for the client's status page; ``bytes_up`` went from the local connections
    into the tunnel, ``bytes_down`` came back out of it.
    """

    __slots__ = ("bytes_down", "bytes_up", "connections", "open")

    def __init__(self) -> None:
        self.open = 0
        self.connections = 0
        self.bytes_up = 0
        self.bytes_down = 0


class _CountedChannelSide(_ChannelSide):
    __slots__ = ("_counters",)

    def __init__(self, tcp: TcpSide, counters: ForwardCounters) -> None:
        super().__init__(tcp)
        self._counters = counters

    def dataReceived(self, data: bytes) -> None:
        self._counters.bytes_down += len(data)
        write_now(self._tcp.transport, data)


class _Forwarded(TcpSide):
    __slots__ = ("factory",)

    factory: ForwardingFactory

    def channel_protocol(self) -> Protocol:
        return _CountedChannelSide(self, self.factory.counters)

    def connectionMade(self) -> None:
        counters = self.factory.counters
        counters.open += 1
        counters.connections += 1
        super().connectionMade()
        d = self.factory.endpoint.connect(_Once(self.channel_protocol()))
        d.addErrback(self._failed)

    def dataReceived(self, data: bytes) -> None:
        self.factory.counters.bytes_up += len(data)
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.counters.open -= 1
        super().connectionLost(reason)

    def _failed(self, failure: Failure) -> None:
        self._log.info(
            "{what}: cannot open a channel for {peer}: {why}",
            what=self.factory.label,
            peer=self.transport.getPeer() if self.transport else None,
            why=failure.getErrorMessage(),
        )
        # Reset, never a clean close: the user may have sent a request already, and a FIN
        # would read as "the service answered nothing".
        if self.transport is not None and not self._gone:
            self.transport.abortConnection()  # type: ignore[attr-defined]


class ForwardingFactory(Factory):
    """Accepts TCP connections and carries each one over a new channel from ``endpoint``.

    While the channel is being opened the connection is not read, so nothing is buffered.
    """

    noisy = False

    def __init__(self, endpoint: IStreamClientEndpoint, label: str = "forward") -> None:
        self.endpoint = endpoint
        self.label = label
        self.counters = ForwardCounters()

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        protocol = _Forwarded()
        protocol.factory = self
        return protocol


class _Once(Factory):
    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol
