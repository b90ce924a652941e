"""Prometheus metrics of one runtime process, with the names of shoal/metric_names.py.

The hot path keeps plain numbers: a request or a batch is one dict lookup, one `bisect` and two
additions on a list (prometheus_client's Counter/Histogram objects take a lock and go through
several method calls per update, a few microseconds per request). The numbers become metric
families only when /metrics is scraped (`_Collector`), and prometheus_client still writes the
exposition text, so the format is the library's. Every update and every scrape happens on the
event loop's thread, so the plain lists need no lock.

Queue depth and in-flight are read from the models at scrape time (no per-request updates)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from shoal import metric_names

_LATENCY_BUCKETS = metric_names.LATENCY_BUCKETS
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _Histogram:
    """Per-bucket (not cumulative) counts, the last one for +Inf, and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self, n_buckets: int) -> None:
        self.counts = [0] * (n_buckets + 1)
        self.total = 0.0

    def buckets(self, les: Sequence[str]) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs; `les`: the bounds as label values, +Inf last."""
        out: list[tuple[str, float]] = []
        running = 0
        for le, count in zip(les, self.counts, strict=True):
            running += count
            out.append((le, float(running)))
        return out


def _les(bounds: Sequence[float]) -> tuple[str, ...]:
    # the label values prometheus_client writes for these bounds ("0.0005", "1.0", "+Inf")
    return (*(repr(float(b)) for b in bounds), "+Inf")


_LATENCY_LES = _les(_LATENCY_BUCKETS)
_BATCH_LES = _les(_BATCH_BUCKETS)


class RuntimeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        # (model, protocol, route, code) -> request duration histogram; its count is the
        # request count. `route` is a template ("/v1/models/{model}:predict"), never a raw path.
        self._requests: dict[tuple[str, str, str, int], _Histogram] = {}
        self._batches: dict[str, _Histogram] = {}
        # model -> extra model calls spent finding the rows at fault in failed batches
        self._retries: dict[str, int] = {}
        self.registry.register(_Collector(self))
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

    def watch_model(
        self, model: str, queue_depth: Callable[[], float], inflight: Callable[[], float]
    ) -> None:
        self._queue.labels(model=model).set_function(queue_depth)
        self._inflight.labels(model=model).set_function(inflight)

    def batch_observer(self, model: str) -> BatchObserver:
        hist = self._batches.setdefault(model, _Histogram(len(_BATCH_BUCKETS)))
        self._retries.setdefault(model, 0)
        return BatchObserver(self, model, hist)

    def observe_request(
        self, model: str, protocol: str, route: str, code: int, seconds: float
    ) -> None:
        key = (model, protocol, route, code)
        hist = self._requests.get(key)
        if hist is None:
            hist = self._requests[key] = _Histogram(len(_LATENCY_BUCKETS))
        # bisect_left: the first bound >= seconds, i.e. Prometheus' `le` (less or equal)
        hist.counts[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        hist.total += seconds

    def render(self) -> bytes:
        return generate_latest(self.registry)


class BatchObserver:
    """Called with each batch's size; `retried(calls)` counts the extra calls a failed batch
    took to find its bad rows (one object, so a model gets both from `on_batch`)."""

    __slots__ = ("_counts", "_hist", "_metrics", "_model")

    def __init__(self, metrics: RuntimeMetrics, model: str, hist: _Histogram) -> None:
        self._metrics = metrics
        self._model = model
        self._hist = hist
        self._counts = hist.counts

    def __call__(self, size: int) -> None:
        self._counts[bisect_left(_BATCH_BUCKETS, size)] += 1
        self._hist.total += size

    def retried(self, calls: int) -> None:
        retries = self._metrics._retries
        retries[self._model] = retries.get(self._model, 0) + calls


class _Collector:
    """Turns RuntimeMetrics' plain numbers into metric families at scrape time."""

    def __init__(self, metrics: RuntimeMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "protocol", "route", "code"]
        requests = CounterMetricFamily(
            metric_names.REQUESTS_TOTAL,
            "Requests answered, by model, protocol, route template and HTTP status code.",
            labels=labels,
        )
        duration = HistogramMetricFamily(
            metric_names.REQUEST_DURATION_SECONDS,
            "Time from request received to response sent, queue time included.",
            labels=labels,
        )
        for (model, protocol, route, code), hist in self._metrics._requests.items():
            values = [model, protocol, route, str(code)]
            requests.add_metric(values, float(sum(hist.counts)))
            duration.add_metric(values, hist.buckets(_LATENCY_LES), hist.total)
        batch = HistogramMetricFamily(
            metric_names.BATCH_SIZE, "Rows per model call.", labels=["model"]
        )
        for model, hist in self._metrics._batches.items():
            batch.add_metric([model], hist.buckets(_BATCH_LES), hist.total)
        retries = CounterMetricFamily(
            metric_names.BATCH_RETRIES_TOTAL,
            "Extra model calls spent finding the rows at fault in batches that raised.",
            labels=["model"],
        )
        for model, count in self._metrics._retries.items():
            retries.add_metric([model], float(count))
        yield requests
        yield duration
        yield batch
        yield retries
