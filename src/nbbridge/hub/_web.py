# twisted.web's and Autobahn's resource APIs are untyped.
# mypy: disable-error-code="no-untyped-call"
"""The hub's resources on the relay's Site, and its two periodic jobs.

* `<prefix>/...`   topic WebSockets (`HubRoutes`)
* `GET /stats`     the live page (HTML + JS + CSS from package data: `/stats/app.js`, ...)
* `GET /stats/json` the stats document once; `/stats/ws` streams it every `stats_interval`
* `POST /stats/login`, `POST /stats/logout`: the stats token as a cookie, for the page
* `GET /metrics`   Prometheus

The stats token comes from `Authorization: Bearer` or the page's cookie; without it, requests
see the view `[hub] stats_anonymous` names (totals only, by default). A `?token=` in a stats
URL is refused: it would be written to access logs.

`mount_hub` puts them on the relay's root resource and returns a `HubRuntime`, which the Site
starts and stops with its listener (rate sampling, stats broadcast).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.util import Redirect

from nbbridge.store import Bus
from nbbridge.webpage import StaticFile, shared_file
from nbbridge.websocket import RateLimit, RateLimitedResource, RefusalLog, RouteBinding

from ._cluster import TopicBridge
from ._config import HubConfig, StatsView
from ._core import Hub
from ._metrics import MetricsResource, TunnelFigures, make_registry
from ._protocol import (
    Heartbeat,
    HubFactory,
    HubMemberProtocol,
    StatsStreamFactory,
    hub_token,
)
from ._routes import BadRoute, HubRoute, parse_hub_path
from ._stats import snapshot
from ._stats_access import StatsLogin, StatsLogout, stats_token
from ._stats_cache import StatsDocuments

_STATIC = {
    b"app.js": ("app.js", b"text/javascript; charset=utf-8"),
    b"app.css": ("app.css", b"text/css; charset=utf-8"),
}


def _static(name: str) -> bytes:
    return resources.files("nbbridge.hub").joinpath("static", name).read_bytes()


def request_stats_token(request: Request) -> str | None:
    """The stats token of an HTTP REQUEST: `Authorization: Bearer`, else the page's cookie."""
    header = request.getHeader(b"authorization")
    cookie = request.getHeader(b"cookie")
    return stats_token(
        hub_token(header.decode("latin-1") if header is not None else None, None),
        cookie.decode("latin-1") if cookie is not None else None,
    )


def stats_view(config: HubConfig, request: Request) -> StatsView:
    """What REQUEST may see of the stats."""
    return config.stats_view(request_stats_token(request))


def token_in_url(request: Request) -> bool:
    """Whether REQUEST carries `?token=` (refused on stats routes: URLs end up in logs)."""
    return b"token" in (request.args or {})


#: The answer to a stats request with `?token=` in its URL.
TOKEN_IN_URL = (
    b"tokens in URLs are not accepted (URLs are written to access logs): send "
    b"Authorization: Bearer <token>, or sign in on the /stats page\n"
)


class HubRoutes(Resource):
    """`<prefix>/<topic>`, `<prefix>/in/<topic>`, `<prefix>/out/<topic>` (WebSocket only).

    A bad topic name still gets its WebSocket, closed at once with 4400 and the reason: a
    WebSocket client sees close reasons, not HTTP error pages.
    """

    isLeaf = True

    def __init__(self, factory: HubFactory) -> None:
        super().__init__()
        self._factory = factory

    def render(self, request: Request) -> Any:
        route: HubRoute | BadRoute
        try:
            segments = [s.decode("utf-8") for s in request.postpath or []]
        except UnicodeDecodeError:
            route = BadRoute("topic name is not UTF-8")
        else:
            route = parse_hub_path(segments)
        binding: RouteBinding[HubMemberProtocol] = RouteBinding(self._factory, route, "binding")
        return WebSocketResource(binding).render(request)


class StatsJson(Resource):
    """`GET /stats/json`: this interval's stats document, in the view the request may see."""

    isLeaf = True

    def __init__(self, documents: StatsDocuments, config: HubConfig) -> None:
        super().__init__()
        self._documents = documents
        self._config = config

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if token_in_url(request):
            request.setResponseCode(400)
            return json.dumps({"error": TOKEN_IN_URL.decode().strip()}).encode() + b"\n"
        view = stats_view(self._config, request)
        if view == "none":
            request.setResponseCode(401)
            return b'{"error": "the stats need the stats token"}\n'
        return self._documents.get(view)


class StatsPage(Resource):
    """`GET /stats`: the page; its files, `json`, `ws`, `login` and `logout` are children."""

    def __init__(
        self, documents: StatsDocuments, config: HubConfig, stream: StatsStreamFactory
    ) -> None:
        super().__init__()
        self._page = StaticFile(_static("index.html"), b"text/html; charset=utf-8")
        for name, (filename, content_type) in _STATIC.items():
            self.putChild(name, StaticFile(_static(filename), content_type))
        self.putChild(b"chart.js", StaticFile(shared_file("chart.js"), _STATIC[b"app.js"][1]))
        self.putChild(b"json", StatsJson(documents, config))
        self.putChild(b"ws", WebSocketResource(stream))
        self.putChild(b"login", StatsLogin(config))
        self.putChild(b"logout", StatsLogout())
        # The page links its files relatively to /stats; /stats/ would break that.
        self.putChild(b"", Redirect(b"../stats"))

    def render_GET(self, request: Request) -> bytes:
        if token_in_url(request):
            # An old /stats?token= link: drop the token from the address bar and history;
            # the page then offers its sign-in form.
            request.setResponseCode(303)
            request.setHeader(b"location", b"stats")
            request.setHeader(b"cache-control", b"no-store")
            return b""
        return self._page.render_GET(request)


class HubRuntime:
    """The hub of one Site and its periodic jobs: rate samples, stats broadcasts."""

    _log = Logger()

    def __init__(
        self,
        hub: Hub,
        stream: StatsStreamFactory,
        clock: IReactorTime,
        bridge: TopicBridge | None = None,
    ) -> None:
        self.hub = hub
        self.stream = stream
        self.documents = stream.documents
        #: shares the topics with other relays' hubs (None: this relay's members only)
        self.bridge = bridge
        self._jobs = [
            (self._job(hub.sample, "rate sample"), hub.config.rate_window / 5),
            (self._job(stream.broadcast, "stats broadcast"), hub.config.stats_interval),
        ]
        if bridge is not None:
            self._jobs.append((self._job(bridge.tick, "cluster tick"), hub.config.stats_interval))
        self._loops: list[LoopingCall] = []
        self._clock = clock

    def _job(self, work: Callable[[], None], what: str) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except Exception:
                # A periodic job logs its own errors and keeps running.
                self._log.failure("hub {what} failed", what=what)

        return run

    def start(self) -> None:
        """Start sampling and broadcasting (when the Site starts listening)."""
        if self._loops:
            return
        if self.bridge is not None:
            self.bridge.start()
        # The document's intervals start with the broadcasts: each broadcast builds it afresh.
        self.documents.start()
        for work, interval in self._jobs:
            loop = LoopingCall(work)
            loop.clock = self._clock
            loop.start(interval, now=False)
            self._loops.append(loop)

    def stop(self) -> None:
        """Stop the periodic jobs (when the Site stops listening)."""
        loops, self._loops = self._loops, []
        for loop in loops:
            if loop.running:
                loop.stop()
        if self.bridge is not None:
            self.bridge.stop()


def tunnel_figures(relay: Any) -> dict[str, Any]:
    """The relay core's counters the stats and metrics show beside the hub."""
    status = relay.status()
    return {
        "agents_online": status["agents_online"],
        "links": status["links"],
        "bytes": status["bytes"],
        "pending_dials": relay.pending_count,
        "dial_failures": getattr(relay, "dial_failures", 0),
    }


def _mount(root: Resource, segments: list[bytes], child: Resource) -> None:
    parent = root
    for segment in segments[:-1]:
        existing = parent.children.get(segment)
        if existing is None:
            existing = Resource()
            parent.putChild(segment, existing)
        parent = existing
    parent.putChild(segments[-1], child)


def mount_hub(
    root: Resource,
    relay: Any,
    reactor: IReactorTime,
    config: HubConfig,
    *,
    bus: Bus | None = None,
) -> HubRuntime:
    """Put the hub's routes, /stats and /metrics on ROOT, configured by CONFIG (``[hub]``).

    RELAY is the relay core, read only through what it shows of itself: ``status()``,
    ``pending_count``, ``dial_failures``, ``limits`` (heartbeats) and ``clock``. The hub keeps
    the relay core's time: its time stamps, rate samples and stats broadcasts. REACTOR runs
    the hub's WebSockets.

    BUS (the shared store's, when relays scale out) makes every topic span the relays that
    share it: a sender here reaches readers on the others and the other way round, and the
    stats document gains a ``cluster`` section (`hub._cluster`). Without it the hub serves
    this relay's members only.
    """
    hub = Hub(config, relay.clock)
    heartbeat = Heartbeat(relay.limits.ping_interval, relay.limits.ping_timeout)
    tunnel: TunnelFigures = lambda: tunnel_figures(relay)  # noqa: E731
    factory = HubFactory(hub, heartbeat, reactor)
    bridge = None
    if bus is not None and config.enabled:

        def frame(payload: bytes, is_binary: bool) -> Any:
            return factory.prepareMessage(payload, is_binary, doNotCompress=True).payloadHybi

        bridge = TopicBridge(hub, bus, frame, relay.clock)

    def document() -> dict[str, Any]:
        return snapshot(hub, tunnel(), bridge.figures() if bridge is not None else None)

    documents = StatsDocuments(document, relay.clock, config.stats_interval)
    stream = StatsStreamFactory(config, documents, heartbeat, reactor)
    if config.enabled:
        _mount(root, config.prefix_segments, HubRoutes(factory))
    # Anyone may ask for these, and each answer costs CPU: one rate for them all.
    rate = RateLimit(config.stats_requests_per_second, relay.clock)
    refusals = RefusalLog(relay.clock)

    def limited(resource: Resource, what: str) -> Resource:
        return RateLimitedResource(resource, rate, "stats_requests_per_second", what, refusals)

    root.putChild(b"stats", limited(StatsPage(documents, config, stream), "/stats"))
    registries = {
        "full": make_registry(hub, tunnel, per_topic=True),
        "totals": make_registry(hub, tunnel, per_topic=False),
    }
    metrics = MetricsResource(registries, lambda request: stats_view(config, request), token_in_url)
    root.putChild(b"metrics", limited(metrics, "/metrics"))
    return HubRuntime(hub, stream, relay.clock, bridge)
