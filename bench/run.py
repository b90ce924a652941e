"""`scripts/bench`: Shoal and its peers side by side, one server at a time, in one run.

For each workload: the model-bound limit (in-process), then each server under test, started
fresh, checked for the right answer, warmed up, and loaded for the same duration by the same
load generator. Results go to bench/out/<timestamp>.json and a table appended to
bench/RESULTS.md (see bench/report.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import loadgen, report, servers
from bench.measure import LoadPlan, Measurement, measure
from bench.mlp import create_counter_file
from bench.procs import Server, ServerSpec, post, running
from bench.workloads import WORKLOADS, Workload, body, check_answer

log = logging.getLogger("bench")
PEERS = ("floor", "shoal", "gateway", "kserve", "ray", "ray-tuned")
DEFAULT_PEERS = ("floor", "shoal", "gateway", "kserve", "ray")


@dataclass(frozen=True)
class Settings:
    workloads: list[str]
    peers: list[str]
    knobs: servers.Knobs
    plan: LoadPlan
    moderate_connections: int
    limit_duration_s: float
    rounds: int
    out_dir: Path
    results_md: Path | None
    command: str
    notes: str = ""


@dataclass
class Run:
    settings: Settings
    log_dir: Path
    stats_dir: Path
    limits: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: list[Measurement] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    round: int = 0

    def stats_file(self, name: str) -> str:
        path = str(self.stats_dir / f"{name}.stats")
        create_counter_file(path)
        return path


def parse_args(argv: Sequence[str]) -> Settings:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workloads", default="W1,W2", help="comma list of W1, W2")
    p.add_argument(
        "--peers",
        default=",".join(DEFAULT_PEERS),
        help="comma list of floor, shoal, gateway, kserve, ray, ray-tuned (Ray Serve with "
        "RAY_SERVE_THROUGHPUT_OPTIMIZED=1; not in the default set); gateway implies shoal",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each")
    p.add_argument("--connections", type=int, default=64, help="concurrent clients")
    p.add_argument(
        "--moderate-connections",
        type=int,
        default=4,
        help="clients for the direct-vs-gateway latency pair at moderate load",
    )
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.005)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--limit-duration", type=float, default=5.0)
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat every measurement this many times (peer order reversed on odd rounds); "
        "the table reports medians",
    )
    p.add_argument("--out-dir", type=Path, default=servers.ROOT / "bench" / "out")
    p.add_argument(
        "--results",
        type=Path,
        default=servers.ROOT / "bench" / "RESULTS.md",
        help="markdown file the table is appended to",
    )
    p.add_argument("--no-results", action="store_true", help="write the JSON only")
    p.add_argument("--notes", default="", help="free text added to the machine notes")
    a = p.parse_args(argv)
    workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    peers = [x.strip() for x in a.peers.split(",") if x.strip()]
    for w in workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}")
    for x in peers:
        if x not in PEERS:
            p.error(f"unknown peer {x!r}")
    return Settings(
        workloads=workloads,
        peers=peers,
        knobs=servers.Knobs(a.max_batch_size, a.batch_wait_timeout_s, a.torch_threads),
        plan=LoadPlan(a.connections, a.duration, a.warmup, a.generator, a.wrk_threads),
        moderate_connections=a.moderate_connections,
        limit_duration_s=a.limit_duration,
        rounds=a.rounds,
        out_dir=a.out_dir,
        results_md=None if a.no_results else a.results,
        command="scripts/bench " + shlex.join(argv) if argv else "scripts/bench",
        notes=a.notes,
    )


def model_limit(wl: Workload, s: Settings) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "bench.limit",
        "--hidden",
        str(wl.hidden),
        "--batch",
        str(s.knobs.max_batch_size),
        "--duration",
        str(s.limit_duration_s),
        "--torch-threads",
        str(s.knobs.torch_threads),
    ]
    out = subprocess.run(cmd, cwd=servers.ROOT, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _measure_endpoints(
    run: Run,
    wl: Workload,
    server: str,
    target: Server,
    endpoints: list[servers.Endpoint],
    stats: str,
    connections: int,
    metrics_url: str | None = None,
    also_sids: tuple[int, ...] = (),
) -> None:
    """Check and load each endpoint of `target`; CPU is counted over its session and
    `also_sids` (the replica behind a gateway)."""
    base = target.base
    expected = run.limits[wl.name]["expected"]
    plan = LoadPlan(
        connections,
        run.settings.plan.duration_s,
        run.settings.plan.warmup_s,
        run.settings.plan.generator,
        run.settings.plan.wrk_threads,
    )
    for ep in endpoints:
        status, payload = post(base + ep.path, body(ep.protocol))
        if status != 200:
            raise RuntimeError(f"{server} {ep.protocol}: HTTP {status}: {payload[:300]!r}")
        check_answer(ep.protocol, payload, expected)
        m = measure(
            workload=wl.name,
            server=server,
            protocol=ep.protocol,
            url=base + ep.path,
            body=body(ep.protocol),
            stats_path=stats,
            plan=plan,
            metrics_url=metrics_url,
            sids=(target.sid, *also_sids),
        )
        log.info(
            "%s %-14s %s c=%d: %.0f req/s p50 %.2f ms p99 %.2f ms batch %.1f errors %d, "
            "server CPU %.3f ms/req",
            wl.name,
            server,
            ep.protocol,
            connections,
            m.rps,
            m.p50_ms,
            m.p99_ms,
            m.mean_batch,
            m.errors,
            m.cpu_ms_per_request,
        )
        run.rows.append(dataclasses.replace(m, round=run.round))


def _simple_peer(
    run: Run,
    wl: Workload,
    name: str,
    make: Callable[[int, servers.Knobs, str], tuple[ServerSpec, list[servers.Endpoint]]],
) -> None:
    stats = run.stats_file(f"{wl.name}-{name}")
    spec, endpoints = make(wl.hidden, run.settings.knobs, stats)
    with running(spec, run.log_dir / wl.name, servers.ROOT) as srv:
        _measure_endpoints(run, wl, spec.name, srv, endpoints, stats, run.settings.plan.connections)


def _shoal_and_gateway(run: Run, wl: Workload, with_gateway: bool) -> None:
    """Direct and through the gateway against the same replica process."""
    s = run.settings
    stats = run.stats_file(f"{wl.name}-shoal")
    spec, endpoints = servers.shoal(wl.hidden, s.knobs, stats)
    with running(spec, run.log_dir / wl.name, servers.ROOT) as replica:
        metrics = replica.base + "/metrics"
        _measure_endpoints(run, wl, "shoal", replica, endpoints, stats, s.plan.connections, metrics)
        # Idle: one client, so every request waits out batch_wait_timeout_s alone.
        v2 = [ep for ep in endpoints if ep.protocol == "v2"]
        _measure_endpoints(run, wl, "shoal", replica, v2, stats, 1, metrics)
        if not with_gateway:
            return
        gw_spec = servers.shoal_gateway(replica.base, stats, s.knobs)
        with running(gw_spec, run.log_dir / wl.name, servers.ROOT) as gw:
            behind = (replica.sid,)
            _measure_endpoints(
                run, wl, "shoal-gateway", gw, endpoints, stats, s.plan.connections, metrics, behind
            )
            # The latency the gateway adds, at moderate load (queueing hides it at saturation).
            _measure_endpoints(
                run, wl, "shoal", replica, v2, stats, s.moderate_connections, metrics
            )
            _measure_endpoints(
                run, wl, "shoal-gateway", gw, v2, stats, s.moderate_connections, metrics, behind
            )


def _attempt(run: Run, wl: Workload, peer: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as e:  # one peer failing must not lose the others' numbers
        log.error("%s %s failed: %s", wl.name, peer, e)
        run.failures.append({"workload": wl.name, "peer": peer, "error": str(e)[:2000]})


def _peer_step(run: Run, wl: Workload, peer: str) -> Callable[[], None] | None:
    peers = run.settings.peers
    if peer == "floor":
        return functools.partial(_simple_peer, run, wl, "floor", servers.floor)
    if peer == "kserve":
        return functools.partial(_simple_peer, run, wl, "kserve", servers.kserve)
    if peer == "ray":
        return functools.partial(_simple_peer, run, wl, "ray-serve", servers.ray_serve)
    if peer == "ray-tuned":
        return functools.partial(_simple_peer, run, wl, "ray-serve-tuned", servers.ray_serve_tuned)
    if peer == "shoal":
        return functools.partial(_shoal_and_gateway, run, wl, "gateway" in peers)
    if peer == "gateway" and "shoal" not in peers:
        return functools.partial(_shoal_and_gateway, run, wl, True)
    return None  # gateway alongside shoal: measured against the same replica as shoal


def _sample_limit(run: Run, wl: Workload, samples: list[float], cpu_samples: list[float]) -> None:
    lim = model_limit(wl, run.settings)
    samples.append(lim["rows_per_s"])
    cpu_samples.append(lim["cpu_ms_per_row"])
    run.limits[wl.name] = {
        **lim,
        "rows_per_s": statistics.median(samples),
        "samples": samples,
        "cpu_ms_per_row": statistics.median(cpu_samples),
    }
    log.info("%s round %d: model-bound limit %.0f rows/s", wl.name, run.round, lim["rows_per_s"])


def _run_workload(run: Run, wl: Workload) -> None:
    """Every round: the limit, each peer, the limit again (the table uses the median sample,
    taken under the same background load as the servers)."""
    samples: list[float] = []
    cpu_samples: list[float] = []
    peers = run.settings.peers
    for rnd in range(run.settings.rounds):
        run.round = rnd
        _sample_limit(run, wl, samples, cpu_samples)
        # Reversing the order on odd rounds spreads slow drifts of the machine's load.
        for peer in peers if rnd % 2 == 0 else list(reversed(peers)):
            step = _peer_step(run, wl, peer)
            if step is not None:
                _attempt(run, wl, peer, step)
        _sample_limit(run, wl, samples, cpu_samples)


def machine_notes() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str] = {"python": platform.python_version()}
    for mod in ("torch", "ray", "uvicorn"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = "missing"
    kpy = servers.KSERVE_PYTHON
    if kpy.exists():
        r = subprocess.run(
            [str(kpy), "-c", "import importlib.metadata as m;print(m.version('kserve'))"],
            capture_output=True,
            text=True,
        )
        versions["kserve"] = r.stdout.strip() or "broken"
    else:
        versions["kserve"] = "not installed (run bench/setup)"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=servers.ROOT, capture_output=True, text=True
    ).stdout.strip()
    wrk = "wrk" if loadgen.have_wrk() else "none"
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "loadavg_start": os.getloadavg(),
        "versions": versions,
        "commit": commit,
        "load_generator_available": wrk,
    }


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    s = parse_args(args)
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    s.out_dir.mkdir(parents=True, exist_ok=True)
    notes = machine_notes()
    with tempfile.TemporaryDirectory(
        prefix="shoal-bench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None
    ) as tmp:
        run = Run(s, s.out_dir / "logs" / stamp, Path(tmp))
        for name in s.workloads:
            _run_workload(run, WORKLOADS[name])
    notes["loadavg_end"] = os.getloadavg()
    result = {
        "started": started.isoformat(timespec="seconds"),
        "command": s.command,
        "machine": notes,
        "notes": s.notes,
        "knobs": asdict(s.knobs),
        "load": asdict(s.plan),
        "moderate_connections": s.moderate_connections,
        "workloads": {w: asdict(WORKLOADS[w]) for w in s.workloads},
        "limits": run.limits,
        "rounds": s.rounds,
        "summary": report.summarize([m.to_dict() for m in run.rows]),
        "results": [m.to_dict() for m in run.rows],
        "failures": run.failures,
    }
    out = s.out_dir / f"{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", out)
    if s.results_md is not None:
        with open(s.results_md, "a") as f:
            f.write(report.markdown(result))
        log.info("appended the table to %s", s.results_md)
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
