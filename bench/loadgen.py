"""Closed-loop load: N connections, each posting the same body back to back, for a duration.

Two generators, both in their own process so they never share an interpreter with a server:
`wrk` (C, the default when installed) driven by a Lua script that posts a fixed body and prints
its summary as JSON, and `bench.pyload` (asyncio + uvloop over raw sockets), used where wrk is
missing and by the smoke test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_WRK_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_s":%.6f,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_ms":%.4f,"p90_ms":%.4f,"p99_ms":%.4f,"mean_ms":%.4f,' ..
    '"max_ms":%.4f}\n',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    latency.mean / 1e3, latency.max / 1e3))
end
"""


@dataclass(frozen=True)
class Load:
    url: str  # http://host:port/path
    body: bytes
    connections: int
    duration_s: float
    threads: int = 1
    timeout_s: float = 10.0


@dataclass(frozen=True)
class LoadResult:
    requests: int
    duration_s: float
    errors: int  # transport errors + non-2xx answers + timeouts
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    generator: str

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rps": self.rps}


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run(load: Load, generator: str = "auto") -> LoadResult:
    if generator == "auto":
        generator = "wrk" if have_wrk() else "python"
    if generator == "wrk":
        return _run_wrk(load)
    if generator == "python":
        return _run_python(load)
    raise ValueError(f"unknown load generator {generator!r} (wrk, python, auto)")


def _run_wrk(load: Load) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        script = Path(tmp, "post.lua")
        script.write_text(_WRK_LUA)
        body = Path(tmp, "body.json")
        body.write_bytes(load.body)
        cmd = [
            shutil.which("wrk") or "wrk",
            f"-t{load.threads}",
            f"-c{load.connections}",
            f"-d{load.duration_s:g}s",
            f"--timeout={load.timeout_s:g}s",
            "-s",
            str(script),
            load.url,
        ]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env={**os.environ, "BENCH_BODY_FILE": str(body)},
            timeout=load.duration_s + 60,
            check=False,
        )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    d = json.loads(line.removeprefix("BENCHJSON "))
    errors = d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"]
    ok = d["requests"] - d["status"]  # wrk counts non-2xx/3xx answers among its requests
    return LoadResult(
        requests=ok,
        duration_s=d["duration_s"],
        errors=errors,
        p50_ms=d["p50_ms"],
        p90_ms=d["p90_ms"],
        p99_ms=d["p99_ms"],
        mean_ms=d["mean_ms"],
        max_ms=d["max_ms"],
        generator="wrk",
    )


def _run_python(load: Load) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        body = Path(tmp, "body.json")
        body.write_bytes(load.body)
        cmd = [
            sys.executable,
            "-m",
            "bench.pyload",
            "--url",
            load.url,
            "--body-file",
            str(body),
            "--connections",
            str(load.connections),
            "--duration",
            str(load.duration_s),
            "--timeout",
            str(load.timeout_s),
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=load.duration_s + 60, check=False
        )
    if proc.returncode != 0:
        raise RuntimeError(f"bench.pyload failed ({proc.returncode}): {proc.stderr}")
    d = json.loads(proc.stdout.strip().splitlines()[-1])
    return LoadResult(**d, generator="python")
