"""The gateway's Prometheus metrics. Names come from shoal.metric_names (the autoscaler's contract).

The request path only bumps plain integers (no locks, no label lookups: the gateway is one
thread); a collector turns them, and the registry's held and outstanding counts, into metric
families at scrape time."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

import shoal.metric_names as names
from shoal.gateway.registry import Registry

LATENCY_BUCKETS = names.LATENCY_BUCKETS


_LE = {b: "+Inf" if math.isinf(b) else repr(b) for b in (*LATENCY_BUCKETS, math.inf)}


class _ModelStats:
    __slots__ = ("buckets", "codes", "retries", "sum")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.retries: dict[str, int] = {}


class _Collector(Collector):
    def __init__(self, metrics: GatewayMetrics, registry: Registry) -> None:
        self._metrics = metrics
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            names.GATEWAY_REQUESTS_TOTAL,
            "Requests answered by the gateway.",
            labels=["model", "code"],
        )
        duration = HistogramMetricFamily(
            names.GATEWAY_REQUEST_DURATION_SECONDS,
            "Time from a request's arrival at the gateway to the end of its response.",
            labels=["model"],
        )
        retries = CounterMetricFamily(
            names.GATEWAY_RETRIES_TOTAL,
            "Requests sent again, by reason (connect, reset, draining: on another replica; "
            "saturated: after waiting for room).",
            labels=["model", "reason"],
        )
        for model, stats in list(self._metrics.stats.items()):
            for code, count in sorted(stats.codes.items()):
                requests.add_metric([model, str(code)], count)
            cumulative = 0
            buckets = []
            for bound, count in zip((*LATENCY_BUCKETS, math.inf), stats.buckets, strict=True):
                cumulative += count
                buckets.append((_LE[bound], cumulative))
            duration.add_metric([model], buckets, stats.sum)
            for reason, count in sorted(stats.retries.items()):
                retries.add_metric([model, reason], count)
        held = GaugeMetricFamily(
            names.GATEWAY_HELD_REQUESTS,
            "Requests the gateway holds because the model has no ready replica (or no room).",
            labels=["model"],
        )
        outstanding = GaugeMetricFamily(
            names.GATEWAY_OUTSTANDING_REQUESTS,
            "Requests sent by the gateway to a replica and not yet answered.",
            labels=["model", "replica"],
        )
        for m in list(self._registry.models.values()):
            held.add_metric([m.name], len(m.hold))
            for rep in m.replicas:
                outstanding.add_metric([m.name, rep.key], rep.outstanding)
        yield from (requests, duration, retries, held, outstanding)


class GatewayMetrics:
    def __init__(self, registry: Registry, prometheus: CollectorRegistry | None = None) -> None:
        self.prometheus = prometheus if prometheus is not None else CollectorRegistry()
        self.stats: dict[str, _ModelStats] = {}
        self.prometheus.register(_Collector(self, registry))

    def _stats(self, model: str) -> _ModelStats:
        stats = self.stats.get(model)
        if stats is None:
            stats = self.stats[model] = _ModelStats()
        return stats

    def observe(self, model: str, code: int, seconds: float) -> None:
        stats = self.stats.get(model) or self._stats(model)
        stats.codes[code] = stats.codes.get(code, 0) + 1
        stats.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        stats.sum += seconds

    def retried(self, model: str, reason: str) -> None:
        stats = self._stats(model)
        stats.retries[reason] = stats.retries.get(reason, 0) + 1
