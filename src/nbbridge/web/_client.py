"""What the proxy does for a client and about an upstream's failure, apart from the flow."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import TimeoutError
from twisted.internet.error import ConnectError, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived
from twisted.web.server import Request

from ._head import BadHead
from ._pool import ConnectTimeout
from ._upgrade import UpstreamClosed


def reason(failure: Failure) -> str:
    """A short text for why the upstream could not be used."""
    error = failure.value
    if isinstance(error, ResponseNeverReceived | ResponseFailed | RequestTransmissionFailed):
        inner = [r.getErrorMessage() for r in error.reasons]
        return "; ".join(inner) or type(error).__name__
    if isinstance(error, TimeoutError):
        return "no answer in time"
    return failure.getErrorMessage() or type(error).__name__


def is_upstream_failure(failure: Failure) -> bool:
    return bool(
        failure.check(
            ConnectError,
            ConnectTimeout,
            ResponseNeverReceived,
            ResponseFailed,
            RequestTransmissionFailed,
            UpstreamClosed,
            BadHead,
            TimeoutError,
            ConnectionLost,
        )
    )


def abort(transport: Any) -> None:
    """Reset a connection (a cut must never look like an orderly end)."""
    if transport is not None:
        transport.abortConnection()


class Discard(Protocol):
    """Takes a response body nobody wants any more: its connection is closed at once."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


class ClientWatch:
    """Whether the client left (its connection ended) before its answer was finished.

    Callbacks given to `on_leave` cancel what is under way for it (a connection attempt, a
    request upstream). A request that finishes normally never counts as left.
    """

    def __init__(self, request: Request) -> None:
        self.left = False
        self._on_leave: list[Callable[[], object]] = []
        request.notifyFinish().addErrback(self._gone)

    def _gone(self, failure: Failure) -> None:
        self.left = True
        callbacks, self._on_leave = self._on_leave, []
        for callback in callbacks:
            callback()

    def on_leave(self, callback: Callable[[], object]) -> None:
        if self.left:
            callback()
        else:
            self._on_leave.append(callback)
