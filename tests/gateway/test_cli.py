"""`shoal gateway` as a real process (uvloop, flags, port file, SIGTERM)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from shoal.runtime.testing import shoal_command
from tests.gateway.conftest import wait_until


def _spawn(args: list[str], log_file: Path) -> subprocess.Popen[bytes]:
    with open(log_file, "wb") as log:
        return subprocess.Popen(
            [*shoal_command(), "gateway", *args], stdout=log, stderr=subprocess.STDOUT
        )


async def test_gateway_process_routes_holds_and_stops_on_sigterm(replicas, tmp_path: Path) -> None:
    rep = await replicas("a")
    port_file = tmp_path / "port"
    log_file = tmp_path / "log"
    proc = _spawn(
        [
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--upstream",
            f"alpha={rep.url}",
            "--model",
            "cold",
        ],
        log_file,
    )
    try:
        await wait_until(
            lambda: (port_file.exists() and port_file.read_text() != "") or proc.poll() is not None,
            timeout_s=60,
            what="gateway to listen",
        )
        assert proc.poll() is None, log_file.read_text()
        url = f"http://127.0.0.1:{port_file.read_text()}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            resp = await client.post("/v1/models/alpha:predict", content=b"hello")
            assert resp.status_code == 200, log_file.read_text()
            assert resp.json()["body"] == "hello"
            resp = await client.post(
                "/v1/models/cold:predict", headers={"x-shoal-timeout-ms": "100"}
            )
            assert resp.status_code == 504
            assert (await client.get("/v2/health/ready")).status_code == 200
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        assert code == 0, log_file.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("no-url-here", "expected NAME=http://host:port"),
        ("m=ftp://host:1", "only http:// replicas"),
        ("m=http://host:1/path", "only scheme, host and port"),
    ],
)
def test_bad_upstream_flag_is_a_clear_error(flag: str, message: str) -> None:
    result = subprocess.run(
        [*shoal_command(), "gateway", "--upstream", flag],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stderr
