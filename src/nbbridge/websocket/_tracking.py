# twisted.protocols.policies is untyped.
# mypy: disable-error-code="no-untyped-call"
"""Knowing every open connection of a server's Site, so that stopping can close them and wait.

A `WrappingFactory` puts a `TrackedConnection` between each transport and the Site's protocol.
The relay's WebSocket protocols talk to the transport underneath it directly (Autobahn needs to
see the TLS transport itself), but the wrapper still hears the connection end.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from nbbridge._observer import Waiters


class TrackedConnection(ProtocolWrapper):
    """One connection the tracker knows about."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Unlike ProtocolWrapper, tell the protocol first: "idle" must mean "all cleaned up".
        wrapped: Any = self.wrappedProtocol
        try:
            wrapped.connectionLost(reason)
        finally:
            self.factory.unregisterProtocol(self)
            # Break the cycle, as ProtocolWrapper does.
            self.wrappedProtocol = None  # type: ignore[assignment]


class ConnectionTracker(WrappingFactory):
    """Wraps the Site's factory and keeps its open connections."""

    protocol = TrackedConnection

    def __init__(self, wrapped: Any, clock: IReactorTime) -> None:
        super().__init__(wrapped)
        self._idle: Waiters[None] = Waiters(clock)

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            self._idle.fire(None)

    def open_protocols(self) -> list[Any]:
        """The protocols (HTTP channels, WebSockets) of the open connections."""
        return [w.wrappedProtocol for w in self.protocols if w.wrappedProtocol is not None]

    def when_idle(self) -> Deferred[None]:
        """Fires once no connection is open."""
        if not self.protocols:
            return succeed(None)
        return self._idle.wait()

    def close_all(self, reason: str) -> None:
        """Ask each WebSocket to close (it knows how), and drop plain HTTP connections."""
        for wrapper in list(self.protocols):
            shutdown = getattr(wrapper.wrappedProtocol, "shutdown", None)
            if shutdown is not None:
                shutdown(reason)
            else:
                wrapper.loseConnection()

    def abort_all(self) -> None:
        """Drop whatever is still open."""
        for wrapper in list(self.protocols):
            if wrapper.transport is not None:
                wrapper.transport.abortConnection()
