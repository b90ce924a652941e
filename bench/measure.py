"""One measurement: warm up, then load one endpoint for a fixed time while reading the model's
batch counters (and, for Shoal, its own /metrics) before and after."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from bench import loadgen
from bench.mlp import read_counter_file
from bench.procs import get, session_cpu_seconds


@dataclass(frozen=True)
class LoadPlan:
    connections: int
    duration_s: float
    warmup_s: float
    generator: str = "auto"
    wrk_threads: int = 1


@dataclass(frozen=True)
class Measurement:
    workload: str
    server: str
    protocol: str
    connections: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: int
    requests: int
    duration_s: float
    model_calls: int
    model_rows: int
    mean_batch: float
    server_reported_mean_batch: float | None
    generator: str
    server_cpu_s: float = 0.0
    """CPU time (user+sys) of the server's sessions (all its processes) during the window."""
    cpu_ms_per_request: float = 0.0
    front_cpu_ms_per_request: float = 0.0
    """CPU per request of the first session alone: for the gateway, the gateway without the
    replica behind it; for a direct server, the same as cpu_ms_per_request."""
    round: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SUM = re.compile(r"^shoal_batch_size_sum(?:\{[^}]*\})? ([0-9.eE+-]+)$", re.M)
_COUNT = re.compile(r"^shoal_batch_size_count(?:\{[^}]*\})? ([0-9.eE+-]+)$", re.M)


def scrape_batch_histogram(metrics_url: str) -> tuple[float, float] | None:
    """(sum, count) of shoal_batch_size over all label sets, or None if not exposed."""
    try:
        status, text = get(metrics_url, timeout=5.0)
    except OSError:
        return None
    if status != 200:
        return None
    page = text.decode(errors="replace")
    sums = [float(x) for x in _SUM.findall(page)]
    counts = [float(x) for x in _COUNT.findall(page)]
    if not counts:
        return None
    return sum(sums), sum(counts)


def measure(
    *,
    workload: str,
    server: str,
    protocol: str,
    url: str,
    body: bytes,
    stats_path: str,
    plan: LoadPlan,
    metrics_url: str | None = None,
    sids: tuple[int, ...] = (),
) -> Measurement:
    if plan.warmup_s > 0:
        loadgen.run(
            loadgen.Load(url, body, plan.connections, plan.warmup_s, plan.wrk_threads),
            plan.generator,
        )
    calls0, rows0 = read_counter_file(stats_path)
    hist0 = scrape_batch_histogram(metrics_url) if metrics_url else None
    cpu0 = session_cpu_seconds(sids)
    front0 = session_cpu_seconds(sids[:1])
    res = loadgen.run(
        loadgen.Load(url, body, plan.connections, plan.duration_s, plan.wrk_threads),
        plan.generator,
    )
    cpu1 = session_cpu_seconds(sids)
    front1 = session_cpu_seconds(sids[:1])
    calls1, rows1 = read_counter_file(stats_path)
    hist1 = scrape_batch_histogram(metrics_url) if metrics_url else None
    calls, rows = calls1 - calls0, rows1 - rows0
    reported = None
    if hist0 is not None and hist1 is not None and hist1[1] > hist0[1]:
        reported = (hist1[0] - hist0[0]) / (hist1[1] - hist0[1])
    return Measurement(
        workload=workload,
        server=server,
        protocol=protocol,
        connections=plan.connections,
        rps=res.rps,
        p50_ms=res.p50_ms,
        p90_ms=res.p90_ms,
        p99_ms=res.p99_ms,
        mean_ms=res.mean_ms,
        max_ms=res.max_ms,
        errors=res.errors,
        requests=res.requests,
        duration_s=res.duration_s,
        model_calls=calls,
        model_rows=rows,
        mean_batch=rows / calls if calls else 0.0,
        server_reported_mean_batch=reported,
        generator=res.generator,
        server_cpu_s=cpu1 - cpu0,
        cpu_ms_per_request=(cpu1 - cpu0) * 1e3 / res.requests if res.requests else 0.0,
        front_cpu_ms_per_request=(front1 - front0) * 1e3 / res.requests if res.requests else 0.0,
    )
