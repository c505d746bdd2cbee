"""Two connections spliced byte for byte, with backpressure both ways.

After both WebSocket handshakes the proxy passes bytes, not frames. It may, because RFC 6455
framing survives a byte copy unchanged: the browser's frames are masked client frames, which
is what the upstream expects from its client (us); the upstream's are unmasked server frames,
which is what the browser expects from its server. The handshake headers that shape the
framing (subprotocol, extensions such as permessage-deflate) pass through end to end, so both
ends agree on them as if connected directly. Frame by frame (decode, re-mask, re-encode, as the
relay does for links) would cost a copy and an XOR pass of every payload, and a parser per
side, for nothing the proxy needs: limits, pings and close codes are the two ends' business.

Each end is registered as the producer of the other end's transport: when a side cannot take
more, the other side stops being read. An orderly end (FIN) becomes an orderly end on the other
side; a reset or error becomes an abort, so that neither end mistakes a cut for a close.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from nbbridge._internals import NOT_ENDED, RESET, check_eof, write_now
from nbbridge._tuning import tune
from nbbridge.websocket import TrackedConnection

from ._stats import ProxyStats

#: Read size and pause level of spliced connections (Twisted's default).
READ_SIZE = 64 * 1024


@implementer(IPushProducer)
class _Valve:
    """A side's transport as the producer of the other side's: pausing it is counted."""

    def __init__(self, transport: Any, stats: ProxyStats | None) -> None:
        self._transport = transport
        self._stats = stats

    def pauseProducing(self) -> None:
        self._transport.pauseProducing()
        if self._stats is not None:
            self._stats.note_read_paused()

    def resumeProducing(self) -> None:
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        self._transport.stopProducing()


@implementer(IHalfCloseableProtocol)
class SpliceEnd(Protocol):
    """One side of a splice: what it reads goes to its `peer`'s transport.

    Bytes that arrive before the peer is attached (frames an upstream sent right behind its
    101) are kept and written when it is. An end of input is checked before it is believed
    (`_internals.check_eof`): Twisted's epoll reactor can report a reset that arrived while
    reading was paused (the other side full) as a clean EOF, and a cut WebSocket must reach
    the other side as a reset.
    """

    def __init__(self, stats: ProxyStats | None = None) -> None:
        self.peer: SpliceEnd | None = None
        self._pending: list[bytes] = []
        self._stats = stats
        self.ended: Failure | None = None

    @property
    def out(self) -> Any:
        """The transport to write to: a connection tracker's wrapper is stepped past."""
        transport = self.transport
        if isinstance(transport, TrackedConnection):
            transport = transport.transport
        return transport

    def attach(self, peer: SpliceEnd) -> None:
        """Splice with PEER (call on both ends)."""
        self.peer = peer
        # No Nagle delay for small messages; Twisted's pause level kept (64 KiB).
        tune(self.out, size=READ_SIZE)
        # A full transport of ours pauses the reading of the peer's.
        self.out.registerProducer(_Valve(peer.out, self._stats), True)
        pending, self._pending = self._pending, []
        for data in pending:
            self.dataReceived(data)
        if self.ended is not None:
            self._end_peer(self.ended)

    def dataReceived(self, data: bytes) -> None:
        peer = self.peer
        if peer is None:
            self._pending.append(data)
            return
        out = peer.out
        write_now(out, data)
        if self._stats is not None:
            self._stats.note_queued(out)

    def shutdown(self, reason: str) -> None:
        """The server is stopping (`ConnectionTracker.close_all`): end both sides in order."""
        if self.ended is None and self.transport is not None:
            self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        transport: Any = self.transport
        ended = check_eof(transport)
        if ended == NOT_ENDED:
            # A stale event (see check_eof): Twisted stopped reading; read on.
            if not transport.disconnecting:
                transport.startReading()
        elif ended == RESET:
            transport.abortConnection()
        else:
            # The peer's FIN: a WebSocket ends both ways, so close ours too (connectionLost
            # then closes the other side in order).
            transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Our writing side was shut down (only after we closed): nothing to do."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.ended = reason
        if self.peer is not None:
            self._end_peer(reason)

    def _end_peer(self, reason: Failure) -> None:
        peer = self.peer
        assert peer is not None
        if peer.ended is not None:
            return
        out = peer.out
        out.unregisterProducer()
        if reason.check(ConnectionDone):
            out.loseConnection()
        else:
            out.abortConnection()


def splice(a: SpliceEnd, b: SpliceEnd) -> None:
    """Join A and B: each one's input becomes the other's output."""
    a.attach(b)
    b.attach(a)
