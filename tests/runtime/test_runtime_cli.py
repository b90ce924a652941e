"""Every command the runtime owns fails in one clear line, never a traceback: exit 2 for a taken
port, a file it cannot use and a bad flag (real `shoal` processes)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.runtime.testing import run_shoal

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tests/runtime/sample_models.py:Echo"


def shoal(*args: str) -> subprocess.CompletedProcess[str]:
    return run_shoal(*args, cwd=ROOT)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_on_a_taken_port(taken_port: int) -> None:
    done = shoal("serve", MODEL, "--host", "127.0.0.1", "--port", str(taken_port))
    assert done.returncode == 2
    (line,) = lines(done.stderr)
    assert f"cannot serve on 127.0.0.1:{taken_port}" in line
    assert "Address already in use" in line


def test_serve_with_a_taken_metrics_port(taken_port: int) -> None:
    args = ("--host", "127.0.0.1", "--port", "0", "--metrics-port", str(taken_port))
    done = shoal("serve", MODEL, *args)
    assert done.returncode == 2
    (line,) = lines(done.stderr)
    assert f"cannot serve on 127.0.0.1:{taken_port} (the metrics port)" in line
    assert "Address already in use" in line


def test_demo_on_a_taken_port(taken_port: int) -> None:
    done = shoal("demo", "--once", "--port", str(taken_port))
    assert done.returncode == 2
    (line,) = lines(done.stderr)
    assert line.startswith(f"shoal demo: error: cannot serve on 127.0.0.1:{taken_port}")


def test_serve_with_a_port_file_it_cannot_write(tmp_path: Path) -> None:
    port_file = tmp_path / "missing-dir" / "port"
    done = shoal(
        "serve", MODEL, "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file)
    )
    assert done.returncode == 2
    assert "No such file or directory" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("serve", MODEL, "--port", "eighty"), "argument --port: invalid int value: 'eighty'"),
        (("serve", MODEL, "--max-connections", "0"), "--max-connections must be a positive"),
        (("serve", MODEL, "--no-such-flag"), "unrecognized arguments: --no-such-flag"),
        (("demo", "--port", "x"), "argument --port: invalid int value: 'x'"),
        (
            (
                "batch-predict",
                "examples.adder:Adder",
                "--input",
                "/nonexistent.csv",
                "--output",
                "/tmp/x",
            ),
            "/nonexistent.csv",
        ),
    ],
)
def test_bad_flags_and_files_exit_2_in_one_line(args: tuple[str, ...], message: str) -> None:
    done = shoal(*args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert message in lines(done.stderr)[-1]
