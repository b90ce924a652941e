"""Shared by the gateway-only benchmarks (bench/gateway_scale.py, bench/gateway_upstreams.py):
how the fake replicas and the gateway are started, and one measurement through the gateway
with the gateway process's own CPU time and, for fake replicas, how requests spread over them.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from bench import loadgen, servers
from bench.procs import ServerSpec, free_port, free_ports, get, pid_cpu_seconds
from bench.workloads import body

V2_PATH = "/v2/models/mlp/infer"


def fake_replicas(count: int) -> tuple[ServerSpec, list[str]]:
    """One `bench.fake_replica` process listening on `count` ports; and their base URLs."""
    ports = free_ports(count)
    argv = [sys.executable, "-m", "bench.fake_replica", "--ports", ",".join(map(str, ports))]
    env = {"PYTHONPATH": str(servers.ROOT)}
    spec = ServerSpec(f"fake-replica-{count}", argv, ports[0], V2_PATH, body("v2"), env, 60.0)
    return spec, [f"http://127.0.0.1:{p}" for p in ports]


def gateway(
    name: str, upstreams: Sequence[str], program: Sequence[str] = (str(servers.SHOAL), "gateway")
) -> ServerSpec:
    """A gateway routing model `mlp` to these replica URLs. `program`: `shoal gateway` by
    default, or the bench entry point with another upstream client (bench/upstream_clients.py),
    which takes the same flags."""
    port = free_port()
    argv = [*program, *(a for u in upstreams for a in ("--upstream", f"mlp={u}"))]
    argv += ["--port", str(port), "--host", "127.0.0.1", "--log-format", "json"]
    env = {"PYTHONPATH": str(servers.ROOT)}
    return ServerSpec(name, argv, port, V2_PATH, body("v2"), env, 60.0)


def replica_counts(upstreams: Sequence[str]) -> list[int]:
    """Requests each fake replica has answered so far (its own counter, `GET /stats`)."""
    counts = []
    for u in upstreams:
        status, payload = get(u + "/stats", timeout=5.0)
        if status != 200:
            raise RuntimeError(f"{u}/stats: HTTP {status}")
        counts.append(int(orjson.loads(payload)["requests"]))
    return counts


@dataclass(frozen=True)
class GatewayRow:
    label: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    gateway_cpu_s: float
    """User + system CPU time of the gateway process alone during the window."""
    cpu_ms_per_request: float
    per_replica: tuple[int, ...] = ()
    """Requests each fake replica answered during the window (empty: a real replica)."""

    @property
    def spread(self) -> float:
        """Most / fewest requests on one replica (1.0: perfectly even)."""
        if not self.per_replica:
            return 1.0
        low = min(self.per_replica)
        return max(self.per_replica) / low if low else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "spread": self.spread}


def measure(
    label: str,
    url: str,
    connections: int,
    duration_s: float,
    warmup_s: float,
    gateway_pid: int | None,
    generator: str = "auto",
    fakes: Sequence[str] = (),
) -> GatewayRow:
    """Warm up, then load `url` for `duration_s`, reading the gateway's CPU time and the fake
    replicas' counters just before and just after."""
    payload = body("v2")
    if warmup_s > 0:
        loadgen.run(loadgen.Load(url, payload, connections, warmup_s), generator)
    counts0 = replica_counts(fakes)
    cpu0 = pid_cpu_seconds(gateway_pid) if gateway_pid else 0.0
    res = loadgen.run(loadgen.Load(url, payload, connections, duration_s), generator)
    cpu1 = pid_cpu_seconds(gateway_pid) if gateway_pid else 0.0
    counts1 = replica_counts(fakes)
    return GatewayRow(
        label=label,
        connections=connections,
        rps=res.rps,
        p50_ms=res.p50_ms,
        p99_ms=res.p99_ms,
        errors=res.errors,
        requests=res.requests,
        gateway_cpu_s=cpu1 - cpu0,
        cpu_ms_per_request=(cpu1 - cpu0) * 1e3 / res.requests if res.requests else 0.0,
        per_replica=tuple(b - a for a, b in zip(counts0, counts1, strict=True)),
    )


def median_row(rows: Sequence[GatewayRow]) -> GatewayRow:
    """One row from several rounds of the same measurement: the median of each number (the
    per-replica counts of the round with the median req/s)."""
    mid = sorted(rows, key=lambda r: r.rps)[len(rows) // 2]
    return GatewayRow(
        label=rows[0].label,
        connections=rows[0].connections,
        rps=statistics.median(r.rps for r in rows),
        p50_ms=statistics.median(r.p50_ms for r in rows),
        p99_ms=statistics.median(r.p99_ms for r in rows),
        errors=sum(r.errors for r in rows),
        requests=round(statistics.median(r.requests for r in rows)),
        gateway_cpu_s=statistics.median(r.gateway_cpu_s for r in rows),
        cpu_ms_per_request=statistics.median(r.cpu_ms_per_request for r in rows),
        per_replica=mid.per_replica,
    )


def section_head(title: str, module: str, args: Sequence[str], loads: tuple[float, float]) -> str:
    """The opening of a bench/RESULTS.md section: title with the time, the exact command, the
    machine's CPUs and load average (the machine is shared: the load says how noisy it was)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = f"PYTHONPATH=$PWD .venv/bin/python -m {module} {shlex.join(args)}".strip()
    return (
        f"## {title} ({now})\n\nCommand: `{command}`\n\n{os.cpu_count()} CPUs, load average "
        f"{loads[0]:.1f} at start, {loads[1]:.1f} at end; "
    )
