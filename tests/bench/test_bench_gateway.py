"""The gateway-only benchmarks end to end, small: real `shoal gateway` processes in front of the
real fake-replica process, ~2 s of load per row from the Python load generator (no wrk needed).
Checks the output's shape and that requests went through; asserts nothing about speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.upstream_clients import split_request

ROOT = Path(__file__).resolve().parents[2]


def _run(module: str, *args: str) -> str:
    """Run a bench script with tiny settings and the Python load generator; its stdout."""
    cmd = [sys.executable, "-m", module, *args, "--warmup", "0", "--rounds", "1"]
    cmd += ["--generator", "python"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_gateway_scale_prints_a_row_per_count_and_spreads_requests(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    stdout = _run(
        "bench.gateway_scale", "--counts", "1,3", "--connections", "8", "--duration", "2",
        "--json", str(out),
    )  # fmt: skip

    lines = stdout.splitlines()
    assert any(line.startswith("| 1 | ") for line in lines)
    assert any(line.startswith("| 3 | ") for line in lines)
    (verdict,) = [line for line in lines if line.startswith("- Gateway CPU per request")]
    assert verdict.endswith((": met", ": MISSED"))

    doc = json.loads(out.read_text())
    assert sorted(doc) == ["1", "3"]
    for count, rows in doc.items():
        (row,) = rows
        assert row["requests"] > 0
        assert row["errors"] == 0
        assert row["gateway_cpu_s"] > 0
        # Every answer came from a fake replica, and with 3 each one got some.
        assert len(row["per_replica"]) == int(count)
        assert min(row["per_replica"]) > 0
        assert sum(row["per_replica"]) >= row["requests"]


def test_split_request_gives_the_library_what_the_proxy_would_write() -> None:
    data = (
        b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\ncontent-type: application/json\r\n"
        b"Content-Length: 2\r\nhost: 127.0.0.1:9\r\nx-shoal-timeout-ms: 250\r\n\r\n{}"
    )
    assert split_request(data) == (
        "POST",
        "/v2/models/m/infer?x=1",
        [("content-type", "application/json"), ("x-shoal-timeout-ms", "250")],
        b"{}",
    )


def test_gateway_upstreams_compares_every_client_through_the_real_gateway(
    tmp_path: Path,
) -> None:
    out = tmp_path / "rows.json"
    stdout = _run(
        "bench.gateway_upstreams", "--replicas", "fake", "--connections", "4", "--duration", "1",
        "--json", str(out),
    )  # fmt: skip

    table = [line for line in stdout.splitlines() if line.startswith("| fake | 4 |")]
    assert [line.split(" | ")[2] for line in table] == [
        "none (direct)",
        "shoal pool (hand-written)",
        "httpx",
        "aiohttp",
    ]
    doc = json.loads(out.read_text())
    by_target = {entry["target"]: entry["rounds"][0] for entry in doc["fake"]}
    assert sorted(by_target) == ["aiohttp", "direct", "httpx", "shoal"]
    for target, row in by_target.items():
        assert row["requests"] > 0, target
        assert row["errors"] == 0, target
        # The fake replica answered every request the load generator counted.
        assert row["per_replica"][0] >= row["requests"], target
        if target != "direct":  # the gateway's own CPU time was read
            assert row["gateway_cpu_s"] > 0, target
