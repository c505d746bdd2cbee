"""The datalab daemon as a Twisted service: the listener, and the instances stopped at the end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from nbbridge._observer import OneShotObserver
from nbbridge.store import Store
from nbbridge.web import ProxyResource, UpstreamPool

from ._core import Datalab, DatalabConfig
from ._instances import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_INSTANCES, Instances
from ._launcher import Launcher
from ._proxy import DatalabRouter
from ._records import DatalabState
from ._static import StaticFetcher
from ._upload import DEFAULT_MAX_UPLOAD
from ._web import DatalabApi, DatalabRoot, DatalabSite


class DatalabService(MultiService):
    """Serves the datalab on an endpoint; stopping it stops every instance it started."""

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        endpoint: IStreamServerEndpoint | None,
        config: DatalabConfig,
        store: Store,
        launcher: Launcher,
        pool: UpstreamPool,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        max_upload: int = DEFAULT_MAX_UPLOAD,
        on_listen_failure: Callable[[Failure], None] | None = None,
        keep_instances: bool = False,
        on_stopped: Callable[[], Deferred[None]] | None = None,
        store_ready: Callable[[], Deferred[None]] | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self._on_listen_failure = on_listen_failure
        self._keep_instances = keep_instances
        self._on_stopped = on_stopped
        self._store_ready = store_ready
        self.state = DatalabState.over(store)
        self.instances = Instances(
            reactor,
            launcher,
            self.state,
            idle_timeout=idle_timeout,
            max_instances=max_instances,
        )
        self.datalab = Datalab(reactor, config, self.state, self.instances)
        api = DatalabApi(self.datalab, StaticFetcher(reactor), launcher.spool)
        self.pool = pool
        proxy_resource = ProxyResource(DatalabRouter(self.datalab), pool)
        self.site = DatalabSite(
            DatalabRoot(api, proxy_resource),
            launcher.spool(),
            max_upload,
            precheck_start=self.datalab.precheck_start,
        )
        self._endpoint = endpoint
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None
        self._bound = OneShotObserver[IListeningPort](reactor)

    def startService(self) -> None:
        super().startService()
        d = Deferred.fromCoroutine(self._start())
        d.addErrback(self._listen_failed)

    async def _start(self) -> None:
        if self._store_ready is not None:
            # Nothing can be served without the store: listen once it is connected.
            self._log.info("datalab waiting for its store")
            await self._store_ready()
        if self._keep_instances:
            # Instances a previous daemon left running (on the agent) are ours to serve.
            await self.instances.adopt()
        if self._endpoint is None or not self.running:
            return
        self._listening = self._endpoint.listen(self.site)
        self._listen_ok(await self._listening)

    def _listen_ok(self, port: IListeningPort) -> None:
        self.port = port
        address: Any = port.getHost()
        where = f"{address.host}:{address.port}" if hasattr(address, "port") else str(address)
        self._log.info("nbbridge datalab listening on http://{where}/", where=where)
        self._bound.fire(port)

    def _listen_failed(self, failure: Failure) -> None:
        self._log.critical("nbbridge datalab cannot start: {e}", e=failure.getErrorMessage())
        self._bound.fire(failure)
        if self._on_listen_failure is not None:
            self._on_listen_failure(failure)

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port once bound (or with the failure)."""
        return self._bound.when_fired()

    def stopService(self) -> Deferred[None]:
        """Stop listening, stop every instance, then the children (a tunnel link); fires when
        none is left."""

        async def stop() -> None:
            if self.port is not None:
                stopping = self.port.stopListening()
                if stopping is not None:
                    await stopping
            await self.pool.close()
            await self.instances.close(stop_instances=not self._keep_instances)
            children = super(DatalabService, self).stopService()
            if children is not None:
                await children
            if self._on_stopped is not None:
                await self._on_stopped()
            if self._keep_instances:
                self._log.info("datalab stopped; instances left running for the next one")
            else:
                self._log.info("datalab stopped; no instance left")

        return Deferred.fromCoroutine(stop())
