# twisted.web's resource API is untyped.
# mypy: disable-error-code="no-untyped-call"
"""A request rate for HTTP resources a server answers to anyone (/status, /stats, /metrics).

Each of those costs CPU to build; without a bound, a loop of anonymous GETs takes the server's
core away from the tunnels and topics it carries. `RateLimit` is a token bucket for all callers
together; `RateLimitedResource` puts one in front of a resource subtree, answering 429 with a
one-line reason naming the limit once it is exhausted (and logging through a `RefusalLog`).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from ._guard import RefusalLog


class RateLimit:
    """A token bucket: RATE events per second on average, bursts of up to RATE (at least 1)."""

    def __init__(self, rate: float, clock: IReactorTime) -> None:
        self.rate = rate
        self._clock = clock
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._at = clock.seconds()

    def allow(self) -> bool:
        """Take one token if there is one."""
        now = self._clock.seconds()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def too_many(request: Request, limit: str, rate: float, what: str, refusals: RefusalLog) -> bytes:
    """Answer REQUEST with 429 naming LIMIT (RATE per second), and log it (aggregated)."""
    why = f"too many {what} requests ({limit} = {rate:g})"
    peer = request.getClientAddress()
    refusals.refused(limit, getattr(peer, "host", "peer"), why)
    request.setResponseCode(429, b"Too Many Requests")
    request.setHeader(b"retry-after", b"1")
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"error": why}).encode("utf-8") + b"\n"


class _TooMany(Resource):
    isLeaf = True

    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self._answer = answer

    def render(self, request: Request) -> bytes:
        return self._answer


class RateLimitedResource(Resource):
    """WRAPPED and everything below it, at most RATE requests per second in all.

    One token per request: taken where the request enters this subtree (rendering this
    resource, or stepping to a child of it), never again further down.
    """

    def __init__(
        self, wrapped: IResource, rate: RateLimit, limit: str, what: str, refusals: RefusalLog
    ) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._rate = rate
        self._limit = limit
        self._what = what
        self._refusals = refusals

    def _refuse(self, request: Request) -> bytes:
        return too_many(request, self._limit, self._rate.rate, self._what, self._refusals)

    def getChildWithDefault(self, path: bytes, request: Request) -> Any:
        if not self._rate.allow():
            return _TooMany(self._refuse(request))
        return self._wrapped.getChildWithDefault(path, request)

    def render(self, request: Request) -> Any:
        if not self._rate.allow():
            return self._refuse(request)
        return self._wrapped.render(request)
