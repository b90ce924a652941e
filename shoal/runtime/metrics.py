"""Prometheus metrics of one runtime process, with the names of shoal/metric_names.py.

Labelled children are created once and cached, so the hot path is a dict lookup and an
increment. Queue depth and in-flight are read from the models at scrape time (no per-request
gauge updates)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import Histogram as _Histogram

from shoal import metric_names

_LATENCY_BUCKETS = metric_names.LATENCY_BUCKETS
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class RuntimeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            metric_names.REQUESTS_TOTAL.removesuffix("_total"),
            "Requests answered, by model, protocol and HTTP status code.",
            ["model", "protocol", "code"],
            registry=self.registry,
        )
        self._duration = Histogram(
            metric_names.REQUEST_DURATION_SECONDS,
            "Time from request received to response sent, queue time included.",
            ["model", "protocol", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._batch = Histogram(
            metric_names.BATCH_SIZE,
            "Rows per model call.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self._queue = Gauge(
            metric_names.QUEUE_DEPTH,
            "Rows waiting for a model call (the autoscaler's signal).",
            ["model"],
            registry=self.registry,
        )
        self._inflight = Gauge(
            metric_names.INFLIGHT_REQUESTS,
            "Requests admitted and not yet answered (queued or running).",
            ["model"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, _Histogram]] = {}

    def watch_model(
        self, model: str, queue_depth: Callable[[], float], inflight: Callable[[], float]
    ) -> None:
        self._queue.labels(model=model).set_function(queue_depth)
        self._inflight.labels(model=model).set_function(inflight)

    def batch_observer(self, model: str) -> Callable[[int], None]:
        child = self._batch.labels(model=model)
        return child.observe

    def observe_request(self, model: str, protocol: str, code: int, seconds: float) -> None:
        key = (model, protocol, code)
        pair = self._children.get(key)
        if pair is None:
            labels = {"model": model, "protocol": protocol, "code": str(code)}
            pair = (self._requests.labels(**labels), self._duration.labels(**labels))
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
