"""`shoal gateway` as a real process (uvloop, flags, port file, SIGTERM)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoal.runtime.testing import shoal_command
from tests.gateway.conftest import GatewayProcess, ReplicaFactory


async def test_gateway_process_routes_holds_and_stops_on_sigterm(
    replicas: ReplicaFactory, tmp_path: Path
) -> None:
    rep = await replicas("a")
    gateway = GatewayProcess(["--upstream", f"alpha={rep.url}", "--model", "cold"], tmp_path)
    proc = gateway.proc
    try:
        url = f"http://127.0.0.1:{await gateway.listening()}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            resp = await client.post("/v1/models/alpha:predict", content=b"hello")
            assert resp.status_code == 200, gateway.logs()
            assert resp.json()["body"] == "hello"
            resp = await client.post(
                "/v1/models/cold:predict", headers={"x-shoal-timeout-ms": "100"}
            )
            assert resp.status_code == 504
            assert (await client.get("/v2/health/ready")).status_code == 200
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        assert code == 0, gateway.logs()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upstream", "no-url-here"], "expected NAME=http://host:port"),
        (["--upstream", "m=ftp://host:1"], "only http:// replicas"),
        (["--upstream", "m=http://host:1/path"], "only scheme, host and port"),
        (["--tokens-file", "{bad}"], "token table is not valid YAML/JSON"),
        (["--tokens-file", "{short}"], "at least 8 characters"),
        (["--tokens-file", "/nonexistent/tokens.yaml"], "No such file or directory"),
        (["--kubernetes", "--kubeconfig", "/nonexistent/kubeconfig"], "cannot read kubeconfig"),
        (["--port", "{taken}"], "cannot listen on 127.0.0.1:{taken}: Address already in use"),
        (["--port", "eighty"], "argument --port: invalid int value"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_flags_files_and_ports_are_one_line_and_exit_2(
    args: list[str], message: str, tmp_path: Path, taken_port: int
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tokens: [unclosed")
    short = tmp_path / "short.yaml"
    short.write_text("abc: '*'")
    fill = {"bad": str(bad), "short": str(short), "taken": str(taken_port)}
    argv = [a.format(**fill) for a in args]
    result = subprocess.run(
        [*shoal_command(), "gateway", "--host", "127.0.0.1", "--port", "0", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert message.format(**fill) in result.stderr
    assert "Traceback" not in result.stderr
    errors = [
        line for line in result.stderr.splitlines() if "error" in line or "shoal gateway:" in line
    ]
    assert len(errors) == 1, result.stderr
