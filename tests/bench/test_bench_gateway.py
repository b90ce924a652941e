"""The gateway-only benchmarks end to end, small: real `shoal gateway` processes in front of the
real fake-replica process, ~2 s of load per row from the Python load generator (no wrk needed).
Checks the output's shape and that requests went through; asserts nothing about speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gateway_scale_prints_a_row_per_count_and_spreads_requests(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.gateway_scale",
        "--counts",
        "1,3",
        "--connections",
        "8",
        "--duration",
        "2",
        "--warmup",
        "0",
        "--rounds",
        "1",
        "--generator",
        "python",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    lines = proc.stdout.splitlines()
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
