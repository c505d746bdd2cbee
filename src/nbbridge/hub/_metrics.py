"""`GET /metrics`: Prometheus metrics of the hub and of the tunnel, read at scrape time.

One `CollectorRegistry` per relay (never prometheus-client's global one), holding a collector
that reads the hub's and the relay core's own counters when Prometheus scrapes: nothing is
updated per message for Prometheus' sake. Per-topic series carry `topic` and `kind` labels;
their number is bounded by `[hub] max_topics`. They name topics, so only a scrape with the
stats token gets them; without it, `[hub] stats_anonymous` decides (totals only, by default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from twisted.web.resource import Resource
from twisted.web.server import Request

from ._core import Hub
from ._routes import Role, TopicKind

#: () -> the relay core's counters: agents_online, links, bytes, pending_dials, dial_failures
TunnelFigures = Callable[[], dict[str, Any]]


class HubCollector:
    """Yields the hub's and the tunnel's metrics from their live counters."""

    def __init__(self, hub: Hub, tunnel: TunnelFigures | None, per_topic: bool = True) -> None:
        self._hub = hub
        self._tunnel = tunnel
        self._per_topic = per_topic

    def collect(self) -> Iterator[Metric]:
        yield from self._hub_metrics()
        if self._tunnel is not None:
            yield from self._tunnel_metrics(self._tunnel())

    def _hub_metrics(self) -> Iterator[Metric]:
        hub = self._hub
        topics = GaugeMetricFamily(
            "nbbridge_hub_topics", "Hub topics with members.", labels=["kind"]
        )
        for kind in TopicKind:
            topics.add_metric([kind.value], sum(1 for k, _ in hub.topics if k is kind))
        yield topics
        members = GaugeMetricFamily(
            "nbbridge_hub_members", "Hub connections on a topic.", labels=["role"]
        )
        by_role = dict.fromkeys(Role, 0)
        for member in hub.members():
            by_role[member.route.role] += 1
        for role, count in by_role.items():
            members.add_metric([role.value], count)
        yield members
        t = hub.totals
        yield _counter(
            "nbbridge_hub_received_messages", "Messages members sent to the hub.", t.messages_in
        )
        yield _counter(
            "nbbridge_hub_received_bytes", "Payload bytes members sent to the hub.", t.bytes_in
        )
        yield _counter(
            "nbbridge_hub_delivered_messages", "Messages the hub wrote to members.", t.messages_out
        )
        yield _counter(
            "nbbridge_hub_delivered_bytes", "Payload bytes the hub wrote to members.", t.bytes_out
        )
        dropped = CounterMetricFamily(
            "nbbridge_hub_dropped_messages",
            "Messages dropped: slow_receiver (its queue over the cap), out_sender (sent on out/).",
            labels=["reason"],
        )
        dropped.add_metric(["slow_receiver"], t.dropped)
        dropped.add_metric(["out_sender"], t.ignored)
        yield dropped
        dropped_bytes = CounterMetricFamily(
            "nbbridge_hub_dropped_bytes", "Payload bytes dropped, by reason.", labels=["reason"]
        )
        dropped_bytes.add_metric(["slow_receiver"], t.dropped_bytes)
        dropped_bytes.add_metric(["out_sender"], t.ignored_bytes)
        yield dropped_bytes
        yield _counter(
            "nbbridge_hub_slow_closes",
            "Two-way members closed for being too slow.",
            hub.slow_closes,
        )
        refused = CounterMetricFamily(
            "nbbridge_hub_refused_connections",
            "Hub connections refused, by reason.",
            labels=["reason"],
        )
        for reason in ("bad_topic", "bad_token", "not_permitted", "limit"):
            refused.add_metric([reason], hub.refused.get(reason, 0))
        yield refused
        yield GaugeMetricFamily(
            "nbbridge_hub_queued_bytes",
            "Bytes queued in the hub for receivers whose connection is full.",
            value=hub.queued_bytes,
        )
        if self._per_topic:
            yield from self._topic_metrics()

    def _topic_metrics(self) -> Iterator[Metric]:
        labels = ["topic", "kind"]
        members = GaugeMetricFamily(
            "nbbridge_hub_topic_members", "Connections per topic.", labels=labels
        )
        families = {
            "messages_in": CounterMetricFamily(
                "nbbridge_hub_topic_received_messages", "Messages sent to the topic.", labels=labels
            ),
            "bytes_in": CounterMetricFamily(
                "nbbridge_hub_topic_received_bytes",
                "Payload bytes sent to the topic.",
                labels=labels,
            ),
            "messages_out": CounterMetricFamily(
                "nbbridge_hub_topic_delivered_messages",
                "Messages delivered on the topic.",
                labels=labels,
            ),
            "bytes_out": CounterMetricFamily(
                "nbbridge_hub_topic_delivered_bytes",
                "Payload bytes delivered on the topic.",
                labels=labels,
            ),
            "dropped": CounterMetricFamily(
                "nbbridge_hub_topic_dropped_messages",
                "Messages dropped for slow receivers.",
                labels=labels,
            ),
        }
        for topic in self._hub.topics.values():
            key = [topic.name, topic.kind.value]
            members.add_metric(key, len(topic.members))
            for name, family in families.items():
                family.add_metric(key, getattr(topic.counters, name))
        yield members
        yield from families.values()

    def _tunnel_metrics(self, figures: dict[str, Any]) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "nbbridge_relay_agents_online",
            "Agents with a control connection.",
            value=figures.get("agents_online", 0),
        )
        yield GaugeMetricFamily(
            "nbbridge_relay_links",
            "Spliced links (client to agent).",
            value=figures.get("links", 0),
        )
        yield GaugeMetricFamily(
            "nbbridge_relay_pending_dials",
            "Links waiting for their agent's data connection.",
            value=figures.get("pending_dials", 0),
        )
        yield _counter(
            "nbbridge_relay_link_bytes",
            "Bytes carried through links, both ways.",
            figures.get("bytes", 0),
        )
        yield _counter(
            "nbbridge_relay_dial_failures",
            "Dials an agent never answered (timed out, or it went offline first).",
            figures.get("dial_failures", 0),
        )


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def make_registry(
    hub: Hub, tunnel: TunnelFigures | None, *, per_topic: bool = True
) -> CollectorRegistry:
    """This relay's own registry: the hub and tunnel collector, and the process' own metrics.

    PER_TOPIC: with the series that name topics (for scrapes with the stats token).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub, tunnel, per_topic))  # type: ignore[arg-type]
    ProcessCollector(registry=registry)
    return registry


class MetricsResource(Resource):
    """`GET /metrics` in whichever exposition format the scraper asks for."""

    isLeaf = True

    def __init__(
        self,
        registries: Mapping[str, CollectorRegistry],
        view: Callable[[Request], str],
        token_in_url: Callable[[Request], bool],
    ) -> None:
        """REGISTRIES by view ("full", "totals"); VIEW(request) says which one it may see."""
        super().__init__()
        self._registries = registries
        self._view = view
        self._token_in_url = token_in_url

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        if self._token_in_url(request):
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return (
                b"tokens in URLs are not accepted (URLs are written to access logs): "
                b"send Authorization: Bearer <token>\n"
            )
        registry = self._registries.get(self._view(request))
        if registry is None:
            request.setResponseCode(401)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"the metrics need the stats token (Authorization: Bearer)\n"
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return encoder(registry)
