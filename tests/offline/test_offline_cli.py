"""`shoal batch-predict` as a user runs it: a real subprocess, real files, its own local Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = "tests.offline.offline_models"


def _shoal(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli", "batch-predict", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_writes_parquet_and_reports_a_summary(tmp_path: Path) -> None:
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps({"f0": i, "f1": 2 * i}) + "\n" for i in range(-2, 500)))
    out = tmp_path / "out.parquet"
    proc = _shoal(
        f"{MODELS}:WeightedSum",
        "--input",
        str(src),
        "--output",
        str(out),
        "--config",
        "weight=2",
        "--batch-size",
        "100",
        "--max-actors",
        "2",
    )
    # Two rows have a negative first feature and f0 == 13 fails its whole batch (isolated to
    # that row): the run finishes, says so, and exits 3.
    assert proc.returncode == 3, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 502
    assert summary["failed"] == 3
    assert "502 rows, 3 failed" in proc.stderr
    frame = pd.read_parquet(out).sort_values("f0")
    ok = frame[frame.error.isna()]
    assert (ok.prediction == 2 * (ok.f0 + ok.f1)).all()
    assert frame[frame.error.notna()].f0.tolist() == [-2, -1, 13]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "missing.csv"], "input missing.csv does not exist"),
        (["--input", "__INPUT__", "--min-actors", "3", "--max-actors", "2"], "min actors"),
        (["--input", "__TEXT__"], "unknown format '.txt'"),
    ],
)
def test_cli_bad_arguments_exit_2_with_a_message(
    tmp_path: Path, args: list[str], message: str
) -> None:
    src = tmp_path / "in.csv"
    src.write_text("a\n1\n")
    text = tmp_path / "in.txt"
    text.write_text("a\n1\n")
    args = [{"__INPUT__": str(src), "__TEXT__": str(text)}.get(a, a) for a in args]
    proc = _shoal(f"{MODELS}:PlainFrame", *args, "--output", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_cli_bad_model_path_exits_2(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("a\n1\n")
    proc = _shoal("no_such_module:Model", "--input", str(src), "--output", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "no_such_module" in proc.stderr
