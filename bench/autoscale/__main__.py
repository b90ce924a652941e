"""`python -m bench.autoscale`: every trace under Shoal's policy and the peers; a Markdown table
and the goal lines of issue 17 on stdout (`--append` adds them to bench/RESULTS.md)."""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.autoscale import peers, sim, traces
from shoal.operator.autoscaler import policy

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.md"
MAX_REPLICAS = 40


def scalers(world: sim.World) -> list[Callable[[], peers.Scaler]]:
    target = 0.7 * world.saturated_concurrency
    shoal_cfg = policy.Config.windows_for(
        60.0, min_replicas=0, max_replicas=MAX_REPLICAS, target=target, scale_to_zero_delay_s=90.0
    )
    kw = {"target": target, "dt": world.dt, "max_replicas": MAX_REPLICAS}
    return [
        lambda: peers.Shoal(shoal_cfg, world.dt),
        lambda: peers.Knative(**kw),  # type: ignore[arg-type]
        lambda: peers.RayServe(**kw),  # type: ignore[arg-type]
        lambda: peers.HpaKeda(**kw),  # type: ignore[arg-type]
    ]


def _s(x: float | None) -> str:
    if x is None:
        return "-"
    return "never" if x == float("inf") else f"{x:.1f}"


def run(scale: float, world: sim.World) -> list[sim.Result]:
    return [
        sim.simulate(trace, make(), world)
        for trace in traces.all_traces(scale)
        for make in scalers(world)
    ]


def table(results: Sequence[sim.Result]) -> list[str]:
    out = [
        "| trace | autoscaler | to capacity s | decision s | decisions | first wait s "
        "| p99 delay s | over SLO | over SLO % | replica-s | scale events | reversals "
        "| max reversals / 60 s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        pct = 100 * r.over_slo / r.requests if r.requests else 0.0
        out.append(
            f"| {r.trace} | {r.scaler} | {_s(r.time_to_capacity_s)} | {_s(r.decision_s)} "
            f"| {r.decisions_to_capacity if r.decisions_to_capacity is not None else '-'} "
            f"| {_s(r.first_wait_s)} | {r.p99_delay_s:.2f} | {r.over_slo:,.0f} | {pct:.2f} "
            f"| {r.replica_seconds:,.0f} | {r.scale_events} | {r.reversals} "
            f"| {r.max_reversals_per_60s} |"
        )
    return out


def goals(results: Sequence[sim.Result], world: sim.World) -> list[str]:
    by_trace: dict[str, list[sim.Result]] = {}
    for r in results:
        by_trace.setdefault(r.trace, []).append(r)
    lines = []
    for name, rs in by_trace.items():
        shoal = next(r for r in rs if r.scaler == "shoal")
        others = [r for r in rs if r.scaler != "shoal"]
        cheapest = min(r.replica_seconds for r in others)
        fewer = all(
            shoal.over_slo < r.over_slo or shoal.over_slo == r.over_slo == 0 for r in others
        )
        cost = shoal.replica_seconds / cheapest
        ok = fewer and cost <= 1.10
        detail = ", ".join(f"{r.scaler} {r.over_slo:,.0f}" for r in others)
        lines.append(
            f"- {name}: over SLO shoal {shoal.over_slo:,.0f} vs {detail}; replica-s "
            f"{cost:.2f}x the cheapest peer (goal: fewer, <= 1.10x): {'met' if ok else 'MISSED'}"
        )
        if shoal.decision_s is not None and name in ("step", "spike"):
            ok = shoal.decision_s <= 1.0 and shoal.decisions_to_capacity == 1
            lines.append(
                f"- {name}: scale-up decision {shoal.decision_s:.1f} s after the rise, "
                f"{shoal.decisions_to_capacity} decision(s) (goal: <= 1 s, one): "
                f"{'met' if ok else 'MISSED'}"
            )
        if shoal.first_wait_s is not None:
            ok = shoal.first_wait_s <= world.cold_start_s + 1.0
            lines.append(
                f"- {name}: first request after idle at zero waited {shoal.first_wait_s:.1f} s "
                f"(goal: load time {world.cold_start_s:g} s + 1 s): {'met' if ok else 'MISSED'}"
            )
        if name == "noisy":
            ok = shoal.max_reversals_per_60s <= 1
            lines.append(
                f"- noisy: at most {shoal.max_reversals_per_60s} change(s) of direction in any "
                f"60 s stable window (goal: <= 1): {'met' if ok else 'MISSED'}"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.autoscale", description=__doc__)
    ap.add_argument("--scale", type=float, default=1.0, help="shorten every trace (0..1]")
    ap.add_argument("--cold-start", type=float, default=sim.COLD_START_S, help="seconds")
    ap.add_argument("--append", action="store_true", help="append to bench/RESULTS.md")
    args = ap.parse_args(argv)
    world = sim.World(cold_start_s=args.cold_start)
    results = run(args.scale, world)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    argv_s = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    header = [
        f"## Autoscaling simulator, {stamp}",
        "",
        f"Command: `python -m bench.autoscale {argv_s}`".rstrip() + f"` (commit {commit})",
        "",
        f"One replica serves {world.capacity:,.0f} req/s with {world.service_s * 1000:.1f} ms "
        f"service time; a new one is ready {world.cold_start_s:g} s after it is ordered; SLO "
        f"{world.slo_s:g} s; every autoscaler aims at {0.7 * world.saturated_concurrency:.1f} "
        f"queued + in-flight per replica (70 % of a saturated replica's); max {MAX_REPLICAS}.",
        "",
    ]
    lines = [*header, *table(results), "", "Goals (issue 17):", "", *goals(results, world), ""]
    text = "\n".join(lines).replace("`python -m bench.autoscale `", "`python -m bench.autoscale`")
    print(text)
    if args.append:
        with RESULTS.open("a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
