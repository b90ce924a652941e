"""`python -m bench.gateway_upstreams`: the gateway's hand-written HTTP/1.1 upstream pool against
the same gateway over httpx and over aiohttp (issue 16 item 3), so the choice is measured.

Three gateway processes, identical but for the replica-side client (bench/upstream_clients.py
swaps the pool class the registry builds), each in front of the same replica: the fake replica
(bench/fake_replica.py: answers in microseconds, so the gateway's own cost shows) and a real
`shoal serve` of the W1 model (what a user sees). For each replica and client count: the
replica direct, then through each gateway; req/s, p50, p99 and the gateway process's own CPU
time per request. Rounds alternate the order; the table reports medians. Prints a markdown
section for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import timeit
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
from bench.mlp import create_counter_file
from bench.procs import Server, running
from bench.upstream_clients import POOLS, split_request
from bench.workloads import WORKLOADS, body

log = logging.getLogger("bench.gateway_upstreams")
CLIENTS = ("shoal", *POOLS)
DIRECT = "direct"


def split_cost_us() -> float:
    """What the library adapters spend re-splitting the proxy's request bytes, per request."""
    data = (
        b"POST /v2/models/mlp/infer HTTP/1.1\r\ncontent-type: application/json\r\n"
        b"x-request-id: gw0000abcd-1\r\ncontent-length: %d\r\nhost: 127.0.0.1:8000\r\n"
        b"x-shoal-timeout-ms: 29999\r\n\r\n%b" % (len(body("v2")), body("v2"))
    )
    n = 20_000
    return min(timeit.repeat(lambda: split_request(data), number=n, repeat=3)) / n * 1e6


def _replica(kind: str, stack: contextlib.ExitStack, logs: Path) -> tuple[Server, list[str]]:
    """Start the replica of this kind; returns it and the fake's counter URLs (none if real)."""
    if kind == "fake":
        spec, urls = fake_replicas(1)
        return stack.enter_context(running(spec, logs, servers.ROOT)), urls
    stats = str(logs / "w1.stats")
    create_counter_file(stats)
    spec, _ = servers.shoal(WORKLOADS["W1"].hidden, servers.Knobs(), stats)
    return stack.enter_context(running(spec, logs, servers.ROOT)), []


def run_replica(
    kind: str, a: argparse.Namespace, logs: Path
) -> dict[tuple[int, str], list[GatewayRow]]:
    rows: dict[tuple[int, str], list[GatewayRow]] = {}
    with contextlib.ExitStack() as stack:
        replica, fakes = _replica(kind, stack, logs)
        program = (sys.executable, "-m", "bench.upstream_clients", "--client")
        gws = {
            c: stack.enter_context(
                running(
                    gateway(f"gw-{kind}-{c}", [replica.base], (*program, c)), logs, servers.ROOT
                )
            )
            for c in a.clients
        }
        targets = [DIRECT, *a.clients]
        for conns in a.connections:
            for rnd in range(a.rounds):
                for t in targets if rnd % 2 == 0 else targets[::-1]:
                    srv = replica if t == DIRECT else gws[t]
                    pid = None if t == DIRECT else srv.sid
                    row = measure(
                        t, srv.base + V2_PATH, conns, a.duration, a.warmup, pid, a.generator, fakes
                    )
                    log.info(
                        "%s replica, %d clients, %s: %.0f req/s p50 %.2f p99 %.2f ms, gateway "
                        "CPU %.3f ms/req",
                        kind,
                        conns,
                        t,
                        row.rps,
                        row.p50_ms,
                        row.p99_ms,
                        row.cpu_ms_per_request,
                    )
                    rows.setdefault((conns, t), []).append(row)
    return rows


HEADER = [
    "| replica | clients | upstream client | req/s | p50 ms | p99 ms | errors |"
    " added p50 ms | gateway CPU ms/req | CPU vs shoal pool |",
    "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
]


def table(kind: str, rows: dict[tuple[int, str], list[GatewayRow]]) -> list[str]:
    out = []
    for conns in sorted({c for c, _ in rows}, reverse=True):
        direct = median_row(rows[(conns, DIRECT)])
        shoal = median_row(rows[(conns, "shoal")]) if (conns, "shoal") in rows else None
        for (c, t), rs in rows.items():
            if c != conns:
                continue
            r = median_row(rs)
            if t == DIRECT:
                added = cpu = rel = "-"
            else:
                added = f"{r.p50_ms - direct.p50_ms:+.2f}"
                cpu = f"{r.cpu_ms_per_request:.3f}"
                base = shoal.cpu_ms_per_request if shoal else 0.0
                rel = f"{r.cpu_ms_per_request / base:.2f}x" if base else "-"
            name = {"shoal": "shoal pool (hand-written)", DIRECT: "none (direct)"}.get(t, t)
            out.append(
                f"| {kind} | {conns} | {name} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} |"
                f" {r.errors} | {added} | {cpu} | {rel} |"
            )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m bench.gateway_upstreams", description=__doc__)
    p.add_argument("--replicas", default="fake,shoal", help="comma list of fake, shoal (W1)")
    p.add_argument("--clients", default=",".join(CLIENTS), help="upstream clients to compare")
    p.add_argument("--connections", default="64,4", help="comma list of load client counts")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--json", type=Path, help="also write every round's rows here")
    a = p.parse_args(args)
    a.clients = [c for c in a.clients.split(",") if c]
    a.connections = [int(c) for c in a.connections.split(",")]
    for c in a.clients:
        if c not in CLIENTS:
            p.error(f"unknown client {c!r} ({', '.join(CLIENTS)})")
    kinds = [k for k in a.replicas.split(",") if k]
    load0 = os.getloadavg()
    results: dict[str, dict[tuple[int, str], list[GatewayRow]]] = {}
    with tempfile.TemporaryDirectory(prefix="shoal-gwup-") as tmp:
        for kind in kinds:
            results[kind] = run_replica(kind, a, Path(tmp))
    load1 = os.getloadavg()
    if a.json is not None:
        doc = {
            kind: [
                {"connections": c, "target": t, "rounds": [r.to_dict() for r in rs]}
                for (c, t), rs in rows.items()
            ]
            for kind, rows in results.items()
        }
        a.json.write_text(json.dumps(doc, indent=2) + "\n")
    title = f"Gateway upstream client: hand-written pool vs {', '.join(POOLS)}"
    print(
        section_head(title, "bench.gateway_upstreams", args, (load0[0], load1[0]))
        + f"{a.warmup:g} s warm-up + {a.duration:g} s per row, {a.rounds} rounds (order "
        f"alternating), medians. The adapters' re-split of the request bytes: "
        f"{split_cost_us():.1f} us per request (included in their CPU).\n"
    )
    print("\n".join(HEADER + [line for kind in kinds for line in table(kind, results[kind])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
