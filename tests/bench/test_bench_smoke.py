"""The benchmark harness end to end, small: the floor server only, ~2 s of load from the Python
load generator (no wrk, Ray or KServe needed). Checks the JSON document and the markdown table
have what bench/RESULTS.md relies on; asserts nothing about speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_floor_run_writes_json_and_table(tmp_path: Path) -> None:
    results_md = tmp_path / "RESULTS.md"
    cmd = [
        sys.executable,
        "-m",
        "bench.run",
        "--workloads",
        "W1",
        "--peers",
        "floor",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--limit-duration",
        "0.5",
        "--connections",
        "8",
        "--generator",
        "python",
        "--out-dir",
        str(tmp_path),
        "--results",
        str(results_md),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]

    (out,) = tmp_path.glob("*.json")
    doc = json.loads(out.read_text())
    assert doc["failures"] == []
    assert doc["knobs"] == {
        "max_batch_size": 32,
        "batch_wait_timeout_s": 0.005,
        "batch_wait_mode": "hard",
        "torch_threads": 1,
    }
    limit = doc["limits"]["W1"]
    assert limit["rows_per_s"] > 0
    assert len(limit["expected"]) == 10
    (row,) = doc["results"]
    assert (row["workload"], row["server"], row["protocol"], row["connections"]) == (
        "W1",
        "floor",
        "v1",
        8,
    )
    assert row["requests"] > 0
    assert row["errors"] == 0
    assert row["rps"] > 0
    assert 0 < row["p50_ms"] <= row["p99_ms"]
    # The model's own counter saw every measured request (rows >= requests answered in the
    # window: a batch may straddle its edges) and batches were formed.
    assert row["model_rows"] >= row["requests"] * 0.9
    assert 1.0 <= row["mean_batch"] <= 32
    assert row["server_cpu_s"] > 0
    assert row["cpu_ms_per_request"] > 0
    (summary,) = doc["summary"]
    assert summary["rps"] == row["rps"]

    table = results_md.read_text()
    assert "### W1" in table
    assert "| floor | V1 |" in table
