"""The WebSocket path: the upgrade goes upstream first, the browser gets the upstream's answer.

The browser's handshake is completed only once the upstream answered 101, and with the
upstream's own 101 headers (its ``Sec-WebSocket-Accept`` for the browser's key, its chosen
subprotocol such as Jupyter's ``v1.kernel.websocket.jupyter.org``, its extensions); then the
two connections are spliced (`nbbridge.web._splice`). Any other answer is given to the browser
as an HTTP response with the upstream's status, headers and (bounded) body.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from ._head import BadHead, BodyReader, HeadReader, ResponseHead
from ._splice import SpliceEnd
from ._stats import ProxyStats


class UpstreamClosed(Exception):
    """The upstream closed the connection before it answered the upgrade."""


class UpgradeClient(SpliceEnd):
    """Writes the upgrade request, reads the answer, then is the upstream end of the splice.

    :ivar answer: fires with the response head and what came after it, or fails
        (`BadHead`, `UpstreamClosed`).
    """

    def __init__(self, request_head: bytes, stats: ProxyStats | None = None) -> None:
        super().__init__(stats)
        self._request_head = request_head
        self._head: HeadReader | None = HeadReader()
        self._body: BodyReader | None = None
        self.answer: Deferred[tuple[ResponseHead, bytes]] = Deferred()
        self.body_read: Deferred[BodyReader] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._request_head)

    def dataReceived(self, data: bytes) -> None:
        if self._head is not None:
            try:
                parsed = self._head.feed(data)
            except BadHead as e:
                self._head = None
                self.answer.errback(e)
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
            if parsed is None:
                return
            self._head = None
            self.answer.callback(parsed)
        elif self._body is not None:
            self._feed_body(data)
        else:
            super().dataReceived(data)

    def read_body(self, head: ResponseHead, leftover: bytes, no_body: bool) -> Deferred[BodyReader]:
        """Read the body of a refused upgrade (HEAD's); fires once it is complete."""
        try:
            self._body = BodyReader(head.headers, no_body=no_body)
        except BadHead as e:
            self.body_read.errback(e)
            return self.body_read
        self._feed_body(leftover)
        if self.ended is not None:
            self._body_ended(self.ended)
        return self.body_read

    def _feed_body(self, data: bytes) -> None:
        body = self._body
        assert body is not None
        if self.body_read.called:
            return
        try:
            done = body.feed(data)
        except BadHead as e:
            self.body_read.errback(e)
            return
        if done:
            self.body_read.callback(body)

    def _body_ended(self, reason: Failure) -> None:
        body = self._body
        assert body is not None
        if self.body_read.called:
            return
        if body.close() and reason.check(ConnectionDone):
            self.body_read.callback(body)
        else:
            self.body_read.errback(UpstreamClosed("the upstream cut its answer short"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._head is not None:
            self._head = None
            self.answer.errback(UpstreamClosed("the upstream closed without answering"))
        if self._body is not None:
            self.ended = reason
            self._body_ended(reason)
            return
        super().connectionLost(reason)
