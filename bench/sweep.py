"""`python -m bench.sweep`: Shoal's batch wait modes across client counts (issue 16, item 4).

One `shoal serve` per mode, the modes alternated per client count so slow drifts of the
machine's load fall on both; each point: req/s, p50, p99, the model's mean batch and the load
average. Prints a markdown table (append it to bench/RESULTS.md by hand, with the command).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import servers
from bench.measure import LoadPlan, Measurement, measure
from bench.mlp import create_counter_file
from bench.procs import running
from bench.workloads import WORKLOADS, body

MODES = ("hard", "adaptive")


def model_ms(hidden: int) -> float:
    """The model's own time for one row (the floor a lone request cannot beat)."""
    cmd = [sys.executable, "-m", "bench.limit", "--hidden", str(hidden), "--batch", "1"]
    cmd += ["--duration", "2"]
    out = subprocess.run(cmd, cwd=servers.ROOT, capture_output=True, text=True, check=True)
    rows_per_s = float(json.loads(out.stdout.strip().splitlines()[-1])["rows_per_s"])
    return 1e3 / rows_per_s


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__)
    p.add_argument("--workload", default="W1", choices=sorted(WORKLOADS))
    p.add_argument("--clients", default="1,2,4,8,16,64")
    p.add_argument("--protocol", default="v2", choices=["v1", "v2"])
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.005)
    a = p.parse_args(argv)
    wl = WORKLOADS[a.workload]
    clients = [int(c) for c in a.clients.split(",")]
    path = "/v2/models/mlp/infer" if a.protocol == "v2" else "/v1/models/mlp:predict"
    rows: dict[tuple[str, int], tuple[Measurement, float]] = {}
    with tempfile.TemporaryDirectory(prefix="shoal-sweep-") as tmp, contextlib.ExitStack() as st:
        bases: dict[str, tuple[str, str]] = {}
        for mode in MODES:
            stats = str(Path(tmp) / f"{mode}.stats")
            create_counter_file(stats)
            knobs = servers.Knobs(a.max_batch_size, a.batch_wait_timeout_s, 1, mode)
            spec, _ = servers.shoal(wl.hidden, knobs, stats)
            srv = st.enter_context(running(spec, Path(tmp) / mode, servers.ROOT))
            bases[mode] = (srv.base, stats)
        for i, c in enumerate(clients):
            for mode in MODES if i % 2 == 0 else tuple(reversed(MODES)):
                base, stats = bases[mode]
                m = measure(
                    workload=wl.name,
                    server=f"shoal-{mode}",
                    protocol=a.protocol,
                    url=base + path,
                    body=body(a.protocol),
                    stats_path=stats,
                    plan=LoadPlan(c, a.duration, a.warmup),
                )
                rows[mode, c] = (m, os.getloadavg()[0])
                print(
                    f"{mode} c={c}: {m.rps:.0f} req/s p50 {m.p50_ms:.2f} p99 {m.p99_ms:.2f} "
                    f"batch {m.mean_batch:.1f} load {rows[mode, c][1]:.1f}",
                    file=sys.stderr,
                )
    one_row = model_ms(wl.hidden)
    print(f"\nmodel time, one row: {one_row:.3f} ms\n")
    print("| clients | mode | req/s | p50 ms | p99 ms | mean batch | load avg |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for c in clients:
        for mode in MODES:
            m, load = rows[mode, c]
            print(
                f"| {c} | {mode} | {m.rps:.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | "
                f"{m.mean_batch:.1f} | {load:.1f} |"
            )
    print()
    for c in clients:
        h, ad = rows["hard", c][0], rows["adaptive", c][0]
        print(
            f"- {c} clients: adaptive/hard req/s {ad.rps / h.rps:.2f}, batch "
            f"{ad.mean_batch:.1f} vs {h.mean_batch:.1f}"
        )
    for c in (4, 64):
        if c in clients:
            h, ad = rows["hard", c][0], rows["adaptive", c][0]
            for what, x, y in (
                ("req/s", ad.rps, h.rps),
                ("mean batch", ad.mean_batch, h.mean_batch),
            ):
                verdict = "met" if x >= y else "missed"
                print(f"- goal {c} clients {what} adaptive >= hard: {x:.1f} vs {y:.1f}: {verdict}")
    if 1 in clients:
        p50 = rows["adaptive", 1][0].p50_ms
        verdict = "met" if p50 <= one_row + 1.0 else "missed"
        print(
            f"- goal 1 client p50 <= model time + 1 ms: {p50:.2f} vs {one_row + 1:.2f}: {verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
