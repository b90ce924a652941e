"""`python -m bench.gateway_scale`: how the gateway's cost grows with the replicas of a model
(issue 16 item 5): `shoal gateway` routing model `mlp` to 1, 10 and 100 replicas (static
`--upstream`), loaded by wrk through the gateway.

The replicas are one `bench.fake_replica` process listening on 100 loopback ports, answering a
fixed small V2 body in microseconds (100 `shoal serve` processes do not fit in memory): the
same replica for every count, so what changes between rows is the gateway's routing alone. Per
count: req/s, p50/p99, the gateway process's own CPU time per request (/proc/PID/stat of the
gateway's pid only) and how evenly P2C spread the requests (each fake port counts its own).
Rounds alternate the order of the counts; the table reports medians. Prints a markdown section
(for bench/RESULTS.md) with the goal met or missed: CPU per request flat, the largest count
within `--goal-ratio` of the smallest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import servers
from bench.gateway_load import (
    V2_PATH,
    GatewayRow,
    fake_replicas,
    gateway,
    measure,
    median_row,
    section_head,
)
from bench.procs import running

log = logging.getLogger("bench.gateway_scale")


def table(rows: Sequence[tuple[int, GatewayRow]]) -> list[str]:
    base = rows[0][1].cpu_ms_per_request
    out = [
        "| replicas | req/s | p50 ms | p99 ms | errors | gateway CPU ms/req | vs fewest |"
        " requests per replica, min-max | spread max/min |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in rows:
        rel = r.cpu_ms_per_request / base if base else float("nan")
        lo, hi = (min(r.per_replica), max(r.per_replica)) if r.per_replica else (0, 0)
        out.append(
            f"| {n} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |"
            f" {r.cpu_ms_per_request:.3f} | {rel:.2f}x | {lo:,}-{hi:,} | {r.spread:.2f} |"
        )
    return out


def goal(rows: Sequence[tuple[int, GatewayRow]], ratio: float) -> str:
    (n0, r0), (n1, r1) = rows[0], rows[-1]
    got = r1.cpu_ms_per_request / r0.cpu_ms_per_request if r0.cpu_ms_per_request else float("inf")
    verdict = "met" if got <= ratio else "MISSED"
    return (
        f"- Gateway CPU per request flat in the replica count (issue 16 item 5): {n1} replicas "
        f"{r1.cpu_ms_per_request:.3f} ms vs {n0} {r0.cpu_ms_per_request:.3f} ms "
        f"({got:.2f}x, goal <= {ratio:.2f}x): {verdict}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m bench.gateway_scale", description=__doc__)
    p.add_argument("--counts", default="1,10,100", help="replica counts, smallest first")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--goal-ratio", type=float, default=1.25)
    p.add_argument("--json", type=Path, help="also write every round's rows here")
    a = p.parse_args(args)
    counts = sorted(int(c) for c in a.counts.split(","))
    load0 = os.getloadavg()
    rounds: dict[int, list[GatewayRow]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="shoal-gwscale-") as tmp, contextlib.ExitStack() as st:
        logs = Path(tmp)
        fake_spec, urls = fake_replicas(counts[-1])
        st.enter_context(running(fake_spec, logs, servers.ROOT))
        gws = {
            n: st.enter_context(running(gateway(f"gw-{n}", urls[:n]), logs, servers.ROOT))
            for n in counts
        }
        for rnd in range(a.rounds):
            for n in counts if rnd % 2 == 0 else counts[::-1]:
                gw = gws[n]
                row = measure(
                    str(n),
                    gw.base + V2_PATH,
                    a.connections,
                    a.duration,
                    a.warmup,
                    gw.sid,  # the gateway leads its own session: its pid
                    a.generator,
                    urls[:n],
                )
                log.info(
                    "round %d, %d replicas: %.0f req/s p50 %.2f p99 %.2f ms, gateway CPU "
                    "%.3f ms/req, spread %.2f",
                    rnd,
                    n,
                    row.rps,
                    row.p50_ms,
                    row.p99_ms,
                    row.cpu_ms_per_request,
                    row.spread,
                )
                rounds[n].append(row)
    load1 = os.getloadavg()
    rows = [(n, median_row(rounds[n])) for n in counts]
    if a.json is not None:
        doc = {str(n): [r.to_dict() for r in rs] for n, rs in rounds.items()}
        a.json.write_text(json.dumps(doc, indent=2) + "\n")
    title = f"Gateway fan-out: 1 model over {', '.join(map(str, counts))} replicas"
    print(
        section_head(title, "bench.gateway_scale", args, (load0[0], load1[0]))
        + f"{a.connections} closed-loop connections, {a.warmup:g} s warm-up + {a.duration:g} s "
        f"per row, {a.rounds} rounds (order alternating), medians.\n"
    )
    print("\n".join(table(rows)))
    print()
    print(goal(rows, a.goal_ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
