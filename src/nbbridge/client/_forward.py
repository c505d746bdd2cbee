"""A local listener whose connections are each carried to an agent's service over the link."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger

from nbbridge._observer import OneShotObserver
from nbbridge.mux import ForwardCounters, ForwardingFactory
from nbbridge.tunnel import AgentLink

#: Services whose forward is opened in a browser rather than with a TCP client.
_WEB_SERVICES = {"jupyter", "http", "web", "lab", "notebook"}


def describe(service: str, address: Any) -> str:
    """What a user should open for a forward listening on ``address``."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        return f"{service} → {address}"
    return f"{service} → {open_url(service, address) or _host(host) + f':{port}'}"


def open_url(service: str, address: Any) -> str | None:
    """The URL to open in a browser for a web service's forward (None for the others)."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if service not in _WEB_SERVICES or host is None or port is None:
        return None
    return f"http://{_host(host)}:{port}/"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class ForwardService(Service):
    """Listens on ``endpoint`` and forwards each connection to ``service`` on the agent."""

    _log = Logger()

    def __init__(
        self, endpoint: IStreamServerEndpoint, service: str, link: AgentLink, reactor: Any
    ) -> None:
        self._endpoint = endpoint
        self._reactor = reactor
        self.service_name = service
        self._factory = ForwardingFactory(link.endpoint(service), label=service)
        self.port: IListeningPort | None = None
        self._bound: OneShotObserver[IListeningPort] = OneShotObserver(reactor)

    @property
    def counters(self) -> ForwardCounters:
        """Connections and bytes this forward has carried."""
        return self._factory.counters

    @property
    def listening(self) -> Deferred[IListeningPort]:
        """A new Deferred: the listening port once bound, or why it could not be."""
        return self._bound.when_fired()

    def startService(self) -> None:
        super().startService()
        d = self._endpoint.listen(self._factory)

        def listening(port: IListeningPort) -> None:
            self.port = port
            self._log.info("{line}", line=describe(self.service_name, port.getHost()))
            self._bound.fire(port)

        def failed(failure: Any) -> None:
            self._log.failure("cannot listen for {service}", failure, service=self.service_name)
            self._bound.fire(failure)
            # A client that cannot listen is useless: end the process, with the reason logged.
            self._reactor.stop()

        d.addCallbacks(listening, failed)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self.port is None:
            return succeed(None)
        port, self.port = self.port, None
        return port.stopListening()  # type: ignore[return-value]
