"""`python -m bench.autoscale.loop_cpu`: the autoscaler loop's own CPU for N ModelServices.

N ModelServices with R ready replicas each; every replica's /metrics is a real HTTP server on
loopback (in a separate process, so its CPU is not counted), answering a replica-sized
exposition (histogram buckets dominate, as in `shoal serve`'s). The loop runs at its production
settings (1 s ticks, 0.5 s timeouts) against a recording API client; the report is the loop
process's CPU time per wall second over the measured ticks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from shoal import metric_names as names
from shoal.operator.autoscaler.loop import Autoscaler
from shoal.operator.autoscaler.settings import AutoscalerSettings

SERVER = r"""
import asyncio, sys
n, body = int(sys.argv[1]), open(sys.argv[2]).read().encode()
head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
head += b"content-length: %d\r\n\r\n" % len(body)
async def handle(r, w):
    try:
        while await r.readuntil(b"\r\n\r\n"):
            w.write(head + body)
            await w.drain()
    except Exception:
        pass
    w.close()
async def main():
    servers = [await asyncio.start_server(handle, "127.0.0.1", 0) for _ in range(n)]
    print(" ".join(str(s.sockets[0].getsockname()[1]) for s in servers), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def exposition(model: str) -> str:
    lines = [
        f'{names.INFLIGHT_REQUESTS}{{model="{model}"}} 3.0',
        f'{names.QUEUE_DEPTH}{{model="{model}"}} 1.0',
    ]
    for le in (*names.LATENCY_BUCKETS, "+Inf"):
        for code in ("200", "503"):
            lines.append(
                f"{names.REQUEST_DURATION_SECONDS}_bucket"
                f'{{model="{model}",protocol="v2",code="{code}",le="{le}"}} 100.0'
            )
    return "\n".join(lines) + "\n"


class Cache:
    """One model name in N namespaces: every replica serves the same exposition."""

    def __init__(self, models: int, ports: list[int], per: int) -> None:
        self.bodies = {
            (f"ns{i}", "m"): {
                "metadata": {"name": "m", "namespace": f"ns{i}", "uid": f"u{i}"},
                "spec": {
                    "model": {"class": "a:B"},
                    "replicas": per,
                    "autoscaling": {"minReplicas": 1, "maxReplicas": 50, "targetQueueDepth": 4},
                },
            }
            for i in range(models)
        }
        self.pods = {
            (f"ns{i}", "m"): [
                {
                    "metadata": {"name": f"m{i}-{j}"},
                    "spec": {"containers": [{"ports": [{"name": "http", "containerPort": p}]}]},
                    "status": {
                        "podIP": "127.0.0.1",
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                }
                for j, p in enumerate(ports[i * per : (i + 1) * per])
            ]
            for i in range(models)
        }

    def keys(self) -> list[tuple[str, str]]:
        return list(self.bodies)

    def modelservice(self, key: tuple[str, str]) -> dict[str, Any] | None:
        return self.bodies[key]

    def pods_of(self, key: tuple[str, str]) -> list[dict[str, Any]]:
        return self.pods[key]


class Api:
    writes = 0

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        self.writes += 1

    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.writes += 1

    async def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        self.writes += 1

    async def post_event(
        self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str, now: datetime
    ) -> None:
        self.writes += 1


async def measure(models: int, per: int, ports: list[int], seconds: float) -> dict[str, float]:
    api = Api()
    loop = Autoscaler(AutoscalerSettings(), Cache(models, ports, per), api)
    stopped = asyncio.Event()
    task = asyncio.create_task(loop.run(stopped))
    await asyncio.sleep(3)  # warm-up: connections opened, first decisions made
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    stopped.set()
    await task
    silent = sum(len(m.silent) for m in loop.models.values())
    return {"cpu_s": cpu, "wall_s": wall, "writes": api.writes, "silent": silent}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.autoscale.loop_cpu", description=__doc__)
    ap.add_argument("--models", type=int, default=50)
    ap.add_argument("--replicas", type=int, default=2, help="ready replicas per model")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args(argv)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(exposition("m"))
    n = args.models * args.replicas
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(n), f.name], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        ports = [int(p) for p in proc.stdout.readline().split()]
        r = asyncio.run(measure(args.models, args.replicas, ports, args.seconds))
    finally:
        proc.kill()
        proc.wait()
        os.unlink(f.name)
    per_tick_ms = 1000 * r["cpu_s"] / r["wall_s"] / args.models
    print(
        f"{args.models} ModelServices x {args.replicas} replicas, 1 s ticks: loop CPU "
        f"{r['cpu_s']:.2f} s in {r['wall_s']:.1f} s = {100 * r['cpu_s'] / r['wall_s']:.1f} % "
        f"of one core ({per_tick_ms:.2f} ms per ModelService per tick); "
        f"silent replicas {r['silent']:.0f}, API writes {r['writes']:.0f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
