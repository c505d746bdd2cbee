"""One plain HTTP request through the proxy: the body up, the response and its body down.

Request bodies: twisted.web reads a request's whole body before it renders, into memory up to
100 kB and into a temporary file beyond (its ``Request.gotLength``), so a large upload is
spooled to disk, never held in memory; it is then streamed upstream from that file by a push
producer that the upstream connection pauses when its buffer is full. Response bodies stream
as they arrive: the upstream connection is registered as the producer of the client's, so a
slow client pauses the upstream (`Agent`'s ``deliverBody`` transport is a push producer).

An upstream that dies mid-body aborts the client's connection: a client must never take a cut
body for a complete one (with a length, or chunked, a clean close could still look whole to a
careless reader; an abort cannot).
"""

from __future__ import annotations

from typing import IO, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from ._stats import ProxyStats

#: Bytes read from a spooled request body per write.
READ_SIZE = 64 * 1024


@implementer(IBodyProducer)
class BytesBody:
    """A small body, written whole."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IBodyProducer, IPushProducer)
class FileBody:
    """A spooled body streamed from FILE (from its current position, LENGTH bytes).

    Written synchronously while the consumer takes it; the consumer's transport pauses us
    (from inside ``write``) when its buffer passes its size, and resumes us once it drained.
    """

    def __init__(self, file: IO[bytes], length: int, stats: ProxyStats) -> None:
        self._file = file
        self.length = length
        self._stats = stats
        self._left = length
        self._consumer: IConsumer | None = None
        self._paused = False
        self._writing = False
        self._done: Deferred[None] = Deferred()

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        self._pump()
        return self._done

    def _pump(self) -> None:
        if self._writing:
            return  # resumed from inside our own write: the loop goes on
        self._writing = True
        try:
            while not self._paused and self._left > 0 and self._consumer is not None:
                chunk = self._file.read(min(READ_SIZE, self._left))
                if not chunk:
                    self._finish(Failure(OSError("request body file ended early")))
                    return
                self._left -= len(chunk)
                self._consumer.write(chunk)
                self._stats.note_queued(self._consumer)
        finally:
            self._writing = False
        if self._left == 0:
            self._finish(None)

    def _finish(self, failure: Failure | None) -> None:
        self._consumer = None
        if self._done.called:
            return
        if failure is None:
            self._done.callback(None)
        else:
            self._done.errback(failure)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._consumer is not None:
            self._pump()

    def stopProducing(self) -> None:
        self._consumer = None
        self._paused = True


def request_body(content: IO[bytes] | None, stats: ProxyStats) -> IBodyProducer | None:
    """The body producer for a received request's CONTENT (None when there is no body)."""
    if content is None:
        return None
    size = content.seek(0, 2)
    content.seek(0)
    if size == 0:
        # Agent sends "Content-Length: 0" itself for POST and PUT without a producer.
        return None
    if size <= READ_SIZE:
        return BytesBody(content.read())
    return FileBody(content, size, stats)


class BodyRelay(Protocol):
    """Receives an upstream response body (``deliverBody``) and writes it to the client.

    The upstream connection is registered as the producer of the client's REQUEST, so that
    a full client pauses the upstream.

    :ivar done: fires with None after a complete body, or fails with the reason the body was
        cut.
    """

    _log = Logger()

    def __init__(self, request: Any, stats: ProxyStats) -> None:
        self._request = request
        self._stats = stats
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        # The upstream connection (a TransportProxyProducer) pauses when the client is full.
        if self._request is not None:
            self._request.registerProducer(self.transport, True)

    def abandon(self) -> None:
        """The client left: drop the upstream connection and whatever else arrives."""
        self._request = None
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self._request is None:
            return
        self._request.write(data)
        self._stats.note_queued(self._request.transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # An unknown-length body ends with the connection (PotentialDataLoss): that is its end.
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)
