"""`python -m bench.profile`: where `shoal serve` spends its CPU on V1 and on V2 (issue 16).

Starts one `shoal serve` (the bench MLP), loads one protocol with the bench's load generator
while py-spy samples the server (`--idle` off, all threads), and prints the functions with the
most samples: self (the function itself) and total (it or what it calls). Raw collapsed stacks
go to --out for flame graphs (`py-spy` writes the format flamegraph.pl and speedscope read).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from bench import loadgen, servers
from bench.mlp import create_counter_file
from bench.procs import running
from bench.workloads import WORKLOADS, body

_LINE = re.compile(r":\d+\)$")  # "fn (file.py:123)" -> "fn (file.py)": one row per function
PATHS = {"v1": "/v1/models/mlp:predict", "v2": "/v2/models/mlp/infer"}


def top(collapsed: Path, n: int) -> tuple[int, list[tuple[str, int, int]]]:
    """(samples, [(frame, self, total)]) from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        samples += k
        own[frames[-1]] += k
        for f in set(frames):
            total[f] += k
    rows = [(f, own[f], total[f]) for f, _ in own.most_common(n)]
    return samples, rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--protocol", default="v2", choices=sorted(PATHS))
    p.add_argument("--workload", default="W1", choices=sorted(WORKLOADS))
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path, default=None, help="keep the collapsed stacks here")
    a = p.parse_args(argv)
    wl = WORKLOADS[a.workload]
    with tempfile.TemporaryDirectory(prefix="shoal-profile-") as tmp:
        stats = str(Path(tmp) / "stats")
        create_counter_file(stats)
        spec, _ = servers.shoal(wl.hidden, servers.Knobs(), stats)
        out = a.out or Path(tmp) / "stacks.txt"
        with running(spec, Path(tmp), servers.ROOT) as srv:
            spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw"]
            spy += ["-r", str(a.rate), "-d", str(int(a.duration)), "-o", str(out)]
            # `shoal serve` leads its session, so its pid is the session id
            spy += ["--nonblocking", "--threads", "--pid", str(srv.sid)]
            result: list[loadgen.LoadResult] = []
            load = loadgen.Load(
                srv.base + PATHS[a.protocol], body(a.protocol), a.connections, a.duration + 1, 1
            )
            t = threading.Thread(target=lambda: result.append(loadgen.run(load, "auto")))
            t.start()
            subprocess.run(spy, check=True, capture_output=True)
            t.join()
        samples, rows = top(out, a.top)
    res = result[0]
    print(f"{a.protocol} {wl.name} c={a.connections}: {res.rps:.0f} req/s, {samples} samples")
    print("| self % | total % | frame |")
    print("|---:|---:|---|")
    for frame, own, tot in rows:
        print(f"| {100 * own / samples:.1f} | {100 * tot / samples:.1f} | `{frame}` |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
