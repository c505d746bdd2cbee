"""``/datalab/static/NONCE/DEST``: a file of an instance, streamed from its ``/files/`` API.

The instance's token goes upstream in a header and never reaches the browser; the body is
relayed chunk by chunk with backpressure (the upstream connection pauses while the browser
is slow), so a large file never sits in memory. A download cut upstream ends the browser's
connection with a reset, never with what looks like a complete file.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from twisted.web.server import Request
from zope.interface import implementer

from ._api import ApiError
from ._records import InstanceRecord

#: Response headers of the instance passed on to the browser.
_PASSED = (
    b"Content-Type",
    b"Content-Length",
    b"Last-Modified",
    b"ETag",
    b"Content-Disposition",
)


@implementer(IAgentEndpointFactory)
class _OneEndpoint:
    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return self._endpoint


class _BodyRelay(Protocol):
    """Writes an upstream response body into the browser's request, paced by the browser."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self.done: Deferred[None] = Deferred()
        self.browser_gone = False

    def connectionMade(self) -> None:
        self._request.registerProducer(self.transport, True)
        self._request.notifyFinish().addErrback(self._browser_gone)

    def _browser_gone(self, _: Failure) -> None:
        self.browser_gone = True
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self._request.write(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self._request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


class StaticFetcher:
    """Streams files from instances to browsers."""

    _log = Logger()

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    async def relay(
        self, request: Request, record: InstanceRecord, endpoint: IStreamClientEndpoint, path: str
    ) -> None:
        """GET /files/PATH from the instance and stream it as REQUEST's response."""
        agent = Agent.usingEndpointFactory(self._reactor, _OneEndpoint(endpoint))
        headers = Headers(
            {
                b"Authorization": [f"token {record.token}".encode()],
                b"Host": [b"127.0.0.1"],
            }
        )
        try:
            response: IResponse = await agent.request(
                b"GET", f"http://127.0.0.1/files/{path}".encode(), headers
            )
        except Exception as e:
            self._log.warn("instance {id} unreachable: {e}", id=record.id, e=str(e))
            raise ApiError(502, "INSTANCE_DOWN", "the instance did not answer") from None
        if response.code != 200:
            response.deliverBody(_Drain())
            if response.code in (403, 404):
                raise ApiError(404, "NOT_FOUND", "no such file")
            raise ApiError(502, "INSTANCE_ERROR", f"the instance answered {response.code}")
        request.setResponseCode(200)
        for name in _PASSED:
            values = response.headers.getRawHeaders(name)
            if values:
                request.responseHeaders.setRawHeaders(name, values[:1])
        request.responseHeaders.setRawHeaders(b"X-Content-Type-Options", [b"nosniff"])
        relay = _BodyRelay(request)
        response.deliverBody(relay)
        try:
            await relay.done
        except Exception as e:
            self._log.warn("download from instance {id} cut: {e}", id=record.id, e=str(e))
            transport: Any = request.transport
            if transport is not None:
                transport.abortConnection()
            return
        if not request.finished and not relay.browser_gone:
            request.finish()


class _Drain(Protocol):
    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        pass
