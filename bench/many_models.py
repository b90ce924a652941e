"""`python -m bench.many_models`: how a replica's memory grows with the models it serves
(issue 16 item 5): one `shoal serve` per count, N copies of the bench MLP, RSS once every model
answers, and W1 req/s on model 0 and on the last model (the others idle).

Prints a markdown table; RSS is the server process's VmRSS from /proc (one process: models
share the interpreter, torch and the event loop).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import loadgen, servers
from bench.mlp import create_counter_file
from bench.procs import ServerSpec, free_port, post, running
from bench.workloads import WORKLOADS, body


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def spec_for(n: int, hidden: int, stats: str) -> ServerSpec:
    port = free_port()
    argv = [str(servers.SHOAL), "serve", *(f"m{i}=bench.models:MLP" for i in range(n))]
    for i in range(n):  # one model takes plain keys, several take name.key
        pre = f"m{i}." if n > 1 else ""
        argv += ["--config", f"{pre}hidden={hidden}", "--config", f"{pre}torch_threads=1"]
    argv += ["--port", str(port), "--host", "127.0.0.1", "--log-format", "json"]
    env = {"PYTHONPATH": str(servers.ROOT), "SHOAL_BENCH_STATS": stats, "OMP_NUM_THREADS": "1"}
    return ServerSpec(f"shoal-{n}", argv, port, "/v2/models/m0/infer", body("v2"), env, 180.0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.many_models", description=__doc__)
    p.add_argument("--counts", default="1,10,50")
    p.add_argument("--workload", default="W1", choices=sorted(WORKLOADS))
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--connections", type=int, default=16)
    a = p.parse_args(argv)
    wl = WORKLOADS[a.workload]
    rows = []
    with tempfile.TemporaryDirectory(prefix="shoal-many-") as tmp:
        stats = str(Path(tmp) / "stats")
        create_counter_file(stats)
        for n in (int(c) for c in a.counts.split(",")):
            with running(spec_for(n, wl.hidden, stats), Path(tmp), servers.ROOT) as srv:
                for i in range(n):  # every model loaded and answering
                    status, _ = post(f"{srv.base}/v2/models/m{i}/infer", body("v2"))
                    if status != 200:
                        raise RuntimeError(f"m{i} of {n}: HTTP {status}")
                rss = rss_mib(srv.sid)  # `shoal serve` leads its session
                rps = []
                for i in (0, n - 1):
                    load = loadgen.Load(
                        f"{srv.base}/v2/models/m{i}/infer", body("v2"), a.connections, a.duration
                    )
                    rps.append(loadgen.run(load).rps)
                rows.append((n, rss, rps[0], rps[1]))
                print(
                    f"{n} models: RSS {rss:.0f} MiB, req/s {rps[0]:.0f} / {rps[1]:.0f}",
                    file=sys.stderr,
                )
    base = rows[0][1]
    print("| models | RSS MiB | MiB per extra model | req/s model 0 | req/s last model |")
    print("|---:|---:|---:|---:|---:|")
    for n, rss, r0, r1 in rows:
        extra = f"{(rss - base) / (n - rows[0][0]):.2f}" if n > rows[0][0] else "-"
        print(f"| {n} | {rss:.0f} | {extra} | {r0:.0f} | {r1:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
