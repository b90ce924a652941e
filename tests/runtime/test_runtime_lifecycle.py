"""Process lifecycle over real processes: readiness after load, failed loads, graceful drain
under load, and port re-binding."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from pathlib import Path

import httpx
import pytest

from shoal.runtime.testing import ServeProcess, run_shoal

ROOT = Path(__file__).resolve().parents[2]
MODELS = "tests/runtime/sample_models.py"


async def test_ready_only_after_the_model_loaded(tmp_path: Path) -> None:
    gate = tmp_path / "loaded"
    proc = ServeProcess(
        f"{MODELS}:WaitsToLoad",
        "--model-name",
        "slow-load",
        "--config",
        f"gate={gate}",
        cwd=ROOT,
        wait_ready=False,
    )
    with proc:
        async with httpx.AsyncClient(base_url=proc.url, timeout=10) as client:
            assert (await client.get("/v2/health/live")).status_code == 200
            assert (await client.get("/v2/health/ready")).status_code == 503
            assert (await client.get("/v2/models/slow-load/ready")).status_code == 503
            r = await client.post("/v1/models/slow-load:predict", json={"instances": [1]})
            assert r.status_code == 503
            assert "loading" in r.json()["error"]
            gate.touch()
            proc.await_ready(deadline=asyncio.get_running_loop().time() + 1e9)
            r = await client.post("/v1/models/slow-load:predict", json={"instances": [1]})
            assert r.json() == {"predictions": [1]}


def test_failed_load_exits_non_zero_with_the_cause(tmp_path: Path) -> None:
    term = tmp_path / "termination-log"
    proc = ServeProcess(
        f"{MODELS}:FailsToLoad", "--termination-log", str(term), cwd=ROOT, wait_ready=False
    )
    with proc:
        code = proc.wait(60)
        assert code != 0
        assert "weights file /models/missing.pt not found" in proc.logs()
        assert "weights file /models/missing.pt not found" in term.read_text()


def test_unimportable_model_exits_non_zero(tmp_path: Path) -> None:
    with ServeProcess("no_such_module:Model", cwd=ROOT, wait_ready=False) as proc:
        assert proc.wait(60) != 0
        assert "no_such_module" in proc.logs()


async def test_sigterm_drains_under_load_and_loses_nothing() -> None:
    proc = ServeProcess(f"{MODELS}:SlowBatched", "--model-name", "slow", cwd=ROOT)
    outcomes: list[str] = []
    with proc:
        stop_sending = asyncio.Event()

        async def client_loop(i: int) -> None:
            async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
                n = 0
                while not stop_sending.is_set():
                    n += 1
                    try:
                        r = await client.post("/v1/models/slow:predict", json={"instances": [n]})
                    except httpx.ConnectError:
                        outcomes.append("refused")  # never accepted: a gateway retries it
                        return
                    if r.status_code == 200:
                        assert r.json() == {"predictions": [n + 1]}
                        outcomes.append("ok")
                    elif r.status_code == 503 and r.headers.get("x-shoal-draining") == "1":
                        outcomes.append("draining")
                        return  # like the gateway: stop sending to a draining replica
                    else:
                        outcomes.append(f"lost {r.status_code} {r.text}")
                        return

        clients = [asyncio.ensure_future(client_loop(i)) for i in range(16)]
        while outcomes.count("ok") < 40:  # under load: a queue is building
            await asyncio.sleep(0.01)
            assert not any(o.startswith("lost") for o in outcomes), outcomes
        # On a busy machine the clients may all sit between requests: signal once the server
        # itself reports a queue (its batches take 20 ms, so the queue is still there).
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as probe:
            while not re.search(
                r'shoal_queue_depth\{model="slow"\} [1-9]', (await probe.get("/metrics")).text
            ):
                assert not any(o.startswith("lost") for o in outcomes), outcomes
        proc.signal(signal.SIGTERM)
        done, _ = await asyncio.wait(clients, timeout=30)
        assert len(done) == len(clients)
        for task in done:
            task.result()  # no client crashed (read errors would show up here)
        code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
        logs = proc.logs()
    assert code == 0, logs
    assert not [o for o in outcomes if o.startswith("lost")], outcomes
    m = re.search(r"draining: (\d+) request\(s\) in flight", logs)
    assert m is not None, logs
    assert int(m.group(1)) > 0  # SIGTERM really arrived with work queued and in flight
    assert "drained: every admitted request was answered" in logs


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_port_is_held_until_exit_then_rebinds() -> None:
    first = ServeProcess(f"{MODELS}:Echo", cwd=ROOT).start()
    try:
        port = first.port
        second = ServeProcess(f"{MODELS}:Echo", cwd=ROOT, port=port)
        try:
            # a second process cannot bind the port while the first holds it (no SO_REUSEPORT)
            with pytest.raises(RuntimeError, match="exited with 2"):
                second.start()
            assert "address already in use" in second.logs().lower()
        finally:
            second.close()
    finally:
        assert first.stop() == 0
    assert _port_is_free(port)
    with ServeProcess(f"{MODELS}:Echo", cwd=ROOT, port=port) as third:
        r = httpx.post(f"{third.url}/v1/models/echo:predict", json={"instances": [7]})
        assert r.json() == {"predictions": [7]}


def test_invalid_settings_exit_2_with_the_cause_in_the_termination_log(tmp_path: Path) -> None:
    term = tmp_path / "termination-log"
    env = {"SHOAL_PORT": "eighty", "SHOAL_TERMINATION_LOG": str(term)}
    done = run_shoal("serve", f"{MODELS}:Echo", cwd=ROOT, env=env, timeout_s=60)
    assert done.returncode == 2
    assert "SHOAL_PORT='eighty' is not a valid int" in done.stderr
    assert "SHOAL_PORT='eighty' is not a valid int" in term.read_text()


async def test_grace_period_bounds_the_drain_of_a_stuck_model(tmp_path: Path) -> None:
    proc = ServeProcess(
        f"gated={MODELS}:Gated",
        "--config",
        f"gate_dir={tmp_path}",
        "--grace-period-s",
        "1",
        "--drain-quiet-s",
        "0",
        cwd=ROOT,
    )
    with proc:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            stuck = asyncio.ensure_future(
                client.post("/v1/models/gated:predict", json={"instances": ["never"]})
            )
            deadline = asyncio.get_running_loop().time() + 10
            while (
                'shoal_inflight_requests{model="gated"} 1.0'
                not in (await client.get("/metrics")).text
            ):
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            proc.signal(signal.SIGTERM)
            # exits 0 once the grace period is over, though the model never returns
            code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
            assert code == 0
            assert "grace period over with 1 request(s) unfinished" in proc.logs()
            r = await stuck  # answered, not cut off: retry elsewhere
            assert r.status_code == 503
            assert r.headers["x-shoal-draining"] == "1"
            assert "shut down before this request finished" in r.json()["error"]
