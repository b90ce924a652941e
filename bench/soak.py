"""Soak: the floods of issue 10 against a gateway and against a replica, while normal clients keep
asking, with the server's resident memory before, during and after.

    python -m bench.soak                       # both targets, about 20 s each
    python -m bench.soak --target gateway --duration-s 10 --scale 0.2 --json out.json

Everything runs on loopback and stops by itself (a few thousand normal requests at most, at most
`--duration-s` of flooding per target). The floods, at `--scale` 1:
- big bodies: 30 connections without a token, each declaring and sending a 15 MB body (again,
  up to three times, as the server closes them);
- pipelining non-readers: 10 connections, each sending 200 requests and reading none;
- idle: 500 connections that send nothing;
- slowloris: 100 connections sending a request head one byte a second.
The gateway has token auth (the normal clients send the token); the replica is
`shoal serve examples.adder:Adder`, and the gateway routes to one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from shoal.runtime.testing import ServeProcess, shoal_command

TOKEN = "soak-token-123"
BODY_BYTES = 15 * 1024 * 1024
MAX_NORMAL_REQUESTS = 3000
PREDICT = "/v1/models/adder:predict"


@dataclass
class Result:
    target: str
    rss_before_mb: float
    rss_peak_mb: float
    rss_after_mb: float
    normal_ok: int
    normal_failed: int
    normal_codes: dict[str, int] = field(default_factory=dict)
    flood_connections: int = 0
    seconds: float = 0.0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30.0)
    except (OSError, TimeoutError):
        return None


async def _big_bodies(port: int, stop: asyncio.Event, opened: list[int]) -> None:
    chunk = b"x" * 65536
    for _ in range(3):
        conn = await _open(port)
        if conn is None:
            return
        opened[0] += 1
        _, writer = conn
        try:
            writer.write(
                b"POST %b HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n"
                % (PREDICT.encode(), BODY_BYTES)
            )
            for _ in range(BODY_BYTES // len(chunk)):
                if stop.is_set():
                    return
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 5.0)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()


async def _pipeliner(port: int, stop: asyncio.Event, opened: list[int]) -> None:
    conn = await _open(port)
    if conn is None:
        return
    opened[0] += 1
    _, writer = conn
    writer.write(b"GET /v1/models/adder HTTP/1.1\r\nhost: x\r\n\r\n" * 200)  # never read
    await stop.wait()
    writer.close()


async def _idle(port: int, stop: asyncio.Event, opened: list[int]) -> None:
    conn = await _open(port)
    if conn is None:
        return
    opened[0] += 1
    await stop.wait()
    conn[1].close()


async def _slowloris(port: int, stop: asyncio.Event, opened: list[int]) -> None:
    conn = await _open(port)
    if conn is None:
        return
    opened[0] += 1
    _, writer = conn
    head = b"POST %b HTTP/1.1\r\nhost: x\r\nx-slow: " % PREDICT.encode() + b"a" * 4096
    try:
        for byte in head:
            if stop.is_set():
                break
            writer.write(bytes([byte]))
            await asyncio.wait_for(writer.drain(), 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()


async def _normal(
    url: str, headers: dict[str, str], stop: asyncio.Event, counts: dict[str, int]
) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10.0, headers=headers) as client:
        while not stop.is_set() and sum(counts.values()) < MAX_NORMAL_REQUESTS:
            try:
                resp = await client.post(PREDICT, json={"instances": [1, 2, 3]})
                ok = resp.status_code == 200 and resp.json() == {"predictions": [2, 3, 4]}
                key = "200" if ok else str(resp.status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            counts[key] = counts.get(key, 0) + 1


async def soak(
    target: str, port: int, pid: int, headers: dict[str, str], duration_s: float, scale: float
) -> Result:
    """Flood `port` (the process `pid`) for `duration_s` while normal clients ask."""
    url = f"http://127.0.0.1:{port}"
    warm: dict[str, int] = {}
    warm_stop = asyncio.Event()
    warm_task = asyncio.create_task(_normal(url, headers, warm_stop, warm))
    await asyncio.sleep(1.0)  # warm-up traffic before the baseline, not synchronisation
    warm_stop.set()
    await warm_task
    before = rss_mb(pid)
    stop = asyncio.Event()
    opened = [0]
    counts: dict[str, int] = {}
    floods: list[Callable[[int, asyncio.Event, list[int]], Coroutine[None, None, None]]] = [
        *[_big_bodies] * max(1, round(30 * scale)),
        *[_pipeliner] * max(1, round(10 * scale)),
        *[_idle] * max(1, round(500 * scale)),
        *[_slowloris] * max(1, round(100 * scale)),
    ]
    started = time.monotonic()
    # Connections that hold on first, then the traffic that moves.
    tasks = [asyncio.create_task(f(port, stop, opened)) for f in reversed(floods)]
    tasks += [asyncio.create_task(_normal(url, headers, stop, counts)) for _ in range(8)]
    peak = before
    while time.monotonic() - started < duration_s and sum(counts.values()) < MAX_NORMAL_REQUESTS:
        peak = max(peak, rss_mb(pid))
        await asyncio.sleep(0.25)  # the sampling interval
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    seconds = time.monotonic() - started
    await asyncio.sleep(2.0)  # let the server close what the floods left
    after = rss_mb(pid)
    ok = counts.get("200", 0)
    return Result(
        target,
        round(before, 1),
        round(peak, 1),
        round(after, 1),
        ok,
        sum(counts.values()) - ok,
        counts,
        opened[0],
        round(seconds, 1),
    )


def start_gateway(
    replica_url: str, tokens_file: Path, log_file: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port_file = log_file.with_suffix(".port")
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            [
                *shoal_command(),
                "gateway",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--upstream",
                f"adder={replica_url}",
                "--tokens-file",
                str(tokens_file),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"gateway did not start:\n{log_file.read_text()}")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


async def run(targets: list[str], duration_s: float, scale: float) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="shoal-soak-") as tmp:
        tokens = Path(tmp) / "tokens.yaml"
        tokens.write_text(f"{TOKEN}: '*'\n")
        replica = await asyncio.to_thread(ServeProcess("examples.adder:Adder").start)
        try:
            assert replica.proc is not None
            if "replica" in targets:
                results.append(
                    await soak("replica", replica.port, replica.proc.pid, {}, duration_s, scale)
                )
            if "gateway" in targets:
                proc, port = await asyncio.to_thread(
                    start_gateway, replica.url, tokens, Path(tmp) / "gateway.log"
                )
                try:
                    auth = {"authorization": f"Bearer {TOKEN}"}
                    results.append(await soak("gateway", port, proc.pid, auth, duration_s, scale))
                finally:
                    proc.terminate()
                    await asyncio.to_thread(proc.wait, 30)
        finally:
            await asyncio.to_thread(replica.close)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--target", choices=["gateway", "replica", "both"], default="both")
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the flood sizes")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    targets = ["gateway", "replica"] if args.target == "both" else [args.target]
    results = asyncio.run(run(targets, min(args.duration_s, 60.0), args.scale))
    for r in results:
        print(
            f"{r.target:8} RSS before {r.rss_before_mb:7.1f} MB  peak {r.rss_peak_mb:7.1f} MB  "
            f"after {r.rss_after_mb:7.1f} MB  normal ok {r.normal_ok} failed {r.normal_failed} "
            f"{r.normal_codes}  flood connections {r.flood_connections}  {r.seconds} s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
