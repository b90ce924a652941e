"""The gateway's Prometheus metrics. Names come from shoal.metric_names (the autoscaler's contract).

Held and outstanding counts are read from the registry at scrape time by a collector, so the
request path pays nothing for them; counters and histograms cache their labelled children."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shoal import metric_names as names
from shoal.runtime.gateway.registry import Registry

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class _StateCollector(Collector):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            names.GATEWAY_HELD_REQUESTS,
            "Requests the gateway holds because the model has no ready replica.",
            labels=["model"],
        )
        outstanding = GaugeMetricFamily(
            names.GATEWAY_OUTSTANDING_REQUESTS,
            "Requests sent by the gateway to a replica and not yet answered.",
            labels=["model", "replica"],
        )
        for model in list(self._registry.models.values()):
            held.add_metric([model.name], len(model.hold))
            for rep in model.replicas:
                outstanding.add_metric([model.name, rep.key], rep.outstanding)
        yield held
        yield outstanding


class GatewayMetrics:
    def __init__(self, registry: Registry, prometheus: CollectorRegistry | None = None) -> None:
        self.prometheus = prometheus if prometheus is not None else CollectorRegistry()
        self._requests = Counter(
            names.GATEWAY_REQUESTS_TOTAL,
            "Requests answered by the gateway.",
            ["model", "code"],
            registry=self.prometheus,
        )
        self._duration = Histogram(
            names.GATEWAY_REQUEST_DURATION_SECONDS,
            "Time from a request's arrival at the gateway to the end of its response.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.prometheus,
        )
        self._retries = Counter(
            names.GATEWAY_RETRIES_TOTAL,
            "Requests retried on another replica, by reason.",
            ["model", "reason"],
            registry=self.prometheus,
        )
        self.prometheus.register(_StateCollector(registry))
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}

    def observe(self, model: str, code: int, seconds: float) -> None:
        key = (model, code)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self._requests.labels(model, str(code))
        counter.inc()
        hist = self._duration_children.get(model)
        if hist is None:
            hist = self._duration_children[model] = self._duration.labels(model)
        hist.observe(seconds)

    def retried(self, model: str, reason: str) -> None:
        self._retries.labels(model, reason).inc()
