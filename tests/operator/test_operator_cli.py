"""`shoal operator` refuses a bad start with one line and exit 2, before it talks to any API."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _operator(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal.operator", "--standalone", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_taken_liveness_port_is_one_line_and_exit_2() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = _operator("--liveness", f"http://127.0.0.1:{port}/healthz")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert f"cannot listen on port {port}" in line
    assert "Traceback" not in proc.stderr


def test_a_malformed_liveness_url_is_one_line_and_exit_2() -> None:
    proc = _operator("--liveness", "0.0.0.0:8081")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "expected http://HOST:PORT/PATH" in line


def test_a_bad_environment_value_is_one_line_and_exit_2() -> None:
    proc = _operator(env={"SHOAL_OPERATOR_RESYNC_SECONDS": "often"})
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "SHOAL_OPERATOR_RESYNC_SECONDS='often' is not a number" in line
