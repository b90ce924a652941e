"""A small closed-loop HTTP/1.1 load generator (asyncio, uvloop when present, raw sockets, keep-
alive): each connection posts the same body back to back until the duration ends. Prints one
JSON line with the fields of bench.loadgen.LoadResult (less `generator`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _connection(
    host: str,
    port: int,
    request: bytes,
    stop_at: float,
    timeout_s: float,
    latencies: list[float],
    errors: list[int],
) -> None:
    reader = writer = None
    while time.perf_counter() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            t0 = time.perf_counter()
            writer.write(request)
            status = await asyncio.wait_for(_read_response(reader), timeout_s)
            if 200 <= status < 300:
                latencies.append(time.perf_counter() - t0)
            else:
                errors[0] += 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            errors[0] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def _percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return 0.0
    return sorted_ms[min(len(sorted_ms) - 1, int(q / 100 * len(sorted_ms)))]


async def _main(a: argparse.Namespace) -> dict[str, float | int]:
    u = urlsplit(a.url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    body = Path(a.body_file).read_bytes()  # noqa: ASYNC240 -- before any connection opens
    request = (
        f"POST {u.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors = [0]
    start = time.perf_counter()
    stop_at = start + a.duration
    await asyncio.gather(
        *(
            _connection(host, port, request, stop_at, a.timeout, latencies, errors)
            for _ in range(a.connections)
        )
    )
    elapsed = time.perf_counter() - start
    ms = sorted(x * 1e3 for x in latencies)
    return {
        "requests": len(ms),
        "duration_s": elapsed,
        "errors": errors[0],
        "p50_ms": _percentile(ms, 50),
        "p90_ms": _percentile(ms, 90),
        "p99_ms": _percentile(ms, 99),
        "mean_ms": sum(ms) / len(ms) if ms else 0.0,
        "max_ms": ms[-1] if ms else 0.0,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--body-file", required=True)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=10.0)
    a = p.parse_args()
    run: Callable[..., Any] = asyncio.run
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        pass
    print(json.dumps(run(_main(a))))


if __name__ == "__main__":
    main()
