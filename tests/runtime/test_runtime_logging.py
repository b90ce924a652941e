"""Logs of `shoal serve --log-format json` are JSON lines only: Python warnings (NumPy's
RuntimeWarning) go through the logging setup instead of landing on stderr raw."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson

from shoal.runtime.testing import ServeProcess

MODEL = """
import numpy as np


class Overflows:
    def __call__(self, row: float) -> float:
        return float(np.float64(row) * np.float64(1e308))  # inf, with a RuntimeWarning
"""


def test_numpy_warnings_become_json_log_lines(tmp_path: Path) -> None:
    (tmp_path / "overflows.py").write_text(MODEL)
    with ServeProcess("overflows.py:Overflows", "--log-format", "json", cwd=tmp_path) as proc:
        r = httpx.post(f"{proc.url}/v1/models/overflows:predict", json={"instances": [10.0]})
        assert r.status_code == 200
        deadline = time.monotonic() + 30
        while "overflow" not in proc.logs():
            assert time.monotonic() < deadline, proc.logs()
            time.sleep(0.05)
        lines = [line for line in proc.logs().splitlines() if line.strip()]
    entries = [orjson.loads(line) for line in lines]  # raises on any non-JSON line
    (warning,) = [e for e in entries if e["logger"] == "py.warnings"]
    assert warning["level"] == "warning"
    assert "RuntimeWarning: overflow encountered" in warning["msg"]
