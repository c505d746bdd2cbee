# twisted.application's service APIs are untyped.
# mypy: disable-error-code="no-untyped-call"
"""The relay as a Twisted service: one listener, and a stop that waits for every connection."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nbbridge._observer import OneShotObserver
from nbbridge.websocket import ConnectionTracker, answer_at_accept

from ._core import Relay
from ._protocol import make_factories
from ._web import Mount, build_site

#: How long a stopping relay waits for peers to answer its close before dropping them.
SHUTDOWN_GRACE = 5.0


def address_url(scheme: str, address: IAddress) -> str:
    """The URL a listening ADDRESS is reached at."""
    if isinstance(address, IPv4Address):
        return f"{scheme}://{address.host}:{address.port}/"
    if isinstance(address, IPv6Address):
        return f"{scheme}://[{address.host}]:{address.port}/"
    if isinstance(address, UNIXAddress):
        name = address.name.decode() if isinstance(address.name, bytes) else address.name
        return f"{scheme}+unix:{name}"
    return f"{scheme}:{address}"


@implementer(IStreamServerEndpoint)
class _AnnouncingEndpoint:
    """Listens through ENDPOINT and logs the URL with the port actually bound."""

    _log = Logger()

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        scheme: str,
        on_failure: Callable[[Failure], None] | None,
        clock: IReactorTime,
    ) -> None:
        self._endpoint = endpoint
        self._scheme = scheme
        self._on_failure = on_failure
        self.port: IListeningPort | None = None
        self._bound: OneShotObserver[IListeningPort] = OneShotObserver(clock)

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:
        d = self._endpoint.listen(protocolFactory)
        d.addCallbacks(self._listening, self._failed)
        return d

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        answer_at_accept(port)
        url = address_url(self._scheme, port.getHost())
        self._log.info("nbbridge relay listening on {url}", url=url)
        self._bound.fire(port)
        return port

    def _failed(self, failure: Failure) -> Failure:
        self._log.critical("nbbridge relay cannot listen: {error}", error=failure.getErrorMessage())
        self._bound.fire(failure)
        if self._on_failure is not None:
            self._on_failure(failure)
        return failure

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the port once bound (or with the failure to bind)."""
        return self._bound.when_fired()


class RelayService(MultiService):
    """The relay: a listener serving the Site; stopping closes every connection and waits."""

    _log = Logger()

    def __init__(
        self,
        relay: Relay,
        endpoint: IStreamServerEndpoint,
        *,
        reactor: IReactorTime,
        secure: bool,
        admin_sha256: bytes | None = None,
        on_listen_failure: Callable[[Failure], None] | None = None,
        mounts: Mapping[str, Mount] | None = None,
    ) -> None:
        super().__init__()
        self.relay = relay
        self._reactor = reactor
        site = build_site(relay, make_factories(relay, reactor), admin_sha256, reactor, mounts)
        self.connections = ConnectionTracker(
            site, reactor, relay.limits.connection_limits(), timer=relay.clock
        )
        self._endpoint = _AnnouncingEndpoint(
            endpoint, "wss" if secure else "ws", on_listen_failure, reactor
        )
        listener = StreamServerEndpointService(self._endpoint, self.connections)
        listener.setServiceParent(self)
        # The registry entries of the agents held here expire unless refreshed; the refresh
        # logs its own problems, so the loop never stops on one.
        refresh = TimerService(relay.registry.refresh_interval, relay.refresh_registry)
        refresh.clock = relay.clock
        refresh.setServiceParent(self)

    def startService(self) -> None:
        if self.relay.authority.open:
            self._log.warn(
                "no --config: accepting any token; serving on loopback only. "
                "Give a relay.toml before exposing this relay."
            )
        super().startService()
        # With relays sharing a store: other relays' dial requests arrive on the bus.
        if self.relay.cluster is not None:
            self.relay.cluster.start()

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port once it is bound."""
        return self._endpoint.when_listening()

    def stopService(self) -> Deferred[None]:
        """Stop listening, close every connection (1001), and fire once all are gone."""
        stopped = super().stopService()
        waits: list[Deferred[Any]] = []
        if self.relay.cluster is not None:
            waits.append(self.relay.cluster.stop())
        if stopped is not None:
            waits.append(stopped)
        d: Deferred[Any] = DeferredList(waits)
        d.addCallback(lambda _: self._close_connections())
        return d

    def _close_connections(self) -> Deferred[None]:
        idle = self.connections.when_idle()
        if idle.called:
            return idle
        self.connections.close_all("relay shutting down")
        late = self._reactor.callLater(SHUTDOWN_GRACE, self.connections.abort_all)

        def done(result: None) -> None:
            if late.active():
                late.cancel()

        idle.addCallback(done)
        return idle
