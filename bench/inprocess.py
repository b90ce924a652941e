"""`python -m bench.inprocess`: CPU per request of the HTTP protocol and the app alone, without
sockets, for the floor and for Shoal on V1 and V2 (issue 16).

Each case is the real protocol class (uvicorn's httptools protocol, plain or behind Shoal's
guard) and the real app (the floor's, or `Runtime(...).app` serving a model whose batch returns
a constant, so the model costs ~nothing), driven through 64 connections whose transport only
records writes: each round feeds every connection one request and runs the loop until every
answer is written; the batcher and the worker thread run as in a server. CPU is the process's
(`time.process_time`, every thread). The cases alternate, and the minimum over rounds is the
least disturbed measure on a shared machine; the median is shown beside it. Sockets, the
kernel and wrk are not in these numbers: they are what `python -m bench.run` adds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

import shoal
from bench.peers.floor import make_app
from bench.workloads import body
from shoal.runtime.http_guard import Limits, protocol_with
from shoal.runtime.lifecycle import Runtime
from shoal.runtime.loading import ModelSpec
from shoal.runtime.settings import ServeSettings

OUT = [0.5] * 10


class Constant:
    """A batched model whose batch costs ~nothing: what remains is serving overhead."""

    @shoal.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_wait_mode="hard")
    def __call__(self, rows: list[Any]) -> list[list[float]]:
        return [OUT for _ in rows]


class _Core:
    @staticmethod
    def predict_rows(rows: Sequence[Any]) -> list[list[float]]:
        return [OUT for _ in rows]


class _Transport:
    """The socket end: counts writes and calls `on_body` when a response's body is written
    (it ends the JSON document, or the chunked terminator)."""

    def __init__(self, on_body: Callable[[], None]) -> None:
        self.writes = 0
        self.last = b""
        self._on_body = on_body

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.last = data
        if data.endswith(b"}") or data.endswith(b"0\r\n\r\n"):
            self._on_body()

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def request(path: str, payload: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    return head.encode() + b"content-length: %d\r\n\r\n" % len(payload) + payload


async def _lifespan(app: Any) -> None:
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})
    started = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.ensure_future(app(scope, queue.get, send))
    await asyncio.wait_for(started.wait(), 30)
    _KEEP.add(task)  # lives as long as the process (the app's lifespan)


_KEEP: set[asyncio.Future[Any]] = set()


async def drive(app: Any, cls: type[Any], data: bytes, requests: int, conns: int) -> float:
    """Microseconds of CPU per request over `requests` requests on `conns` connections."""
    config = Config(app, ws="none", lifespan="off", access_log=False, log_config=None)
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    answered = asyncio.Event()
    outstanding = [0]

    def on_body() -> None:
        outstanding[0] -= 1
        if outstanding[0] == 0:
            answered.set()

    pairs = []
    for _ in range(conns):
        proto = cls(config=config, server_state=state, app_state={}, _loop=loop)
        t = _Transport(on_body)
        proto.connection_made(t)
        pairs.append((proto, t))

    async def one_round() -> None:
        answered.clear()
        outstanding[0] = conns
        for proto, _ in pairs:
            proto.data_received(data)
        await asyncio.wait_for(answered.wait(), 30)

    for _ in range(10):
        await one_round()
    start = time.process_time()
    for _ in range(max(1, requests // conns)):
        await one_round()
    spent = time.process_time() - start
    last = pairs[0][1].last
    if b"predictions" not in last and b"outputs" not in last:
        raise RuntimeError(f"unexpected answer: {last[:300]!r}")
    return spent / (max(1, requests // conns) * conns) * 1e6


async def run(rounds: int, requests: int) -> dict[str, list[float]]:
    shoal_app = Runtime(
        ServeSettings(models=[ModelSpec(name="mlp", target="bench.inprocess:Constant")], port=0)
    )
    await _lifespan(shoal_app.app)
    await asyncio.wait_for(shoal_app.loaded.wait(), 60)
    floor = make_app(_Core(), 32, 0.005)  # type: ignore[arg-type]
    await _lifespan(floor)
    v1 = request("/v1/models/mlp:predict", body("v1"))
    v2 = request("/v2/models/mlp/infer", body("v2"))
    guarded = protocol_with(Limits())
    cases: dict[str, tuple[Any, type[Any], bytes]] = {
        "floor (plain httptools)": (floor, HttpToolsProtocol, v1),
        "shoal V1 (plain httptools)": (shoal_app.app, HttpToolsProtocol, v1),
        "shoal V1 (guarded, as served)": (shoal_app.app, guarded, v1),
        "shoal V2 (guarded, as served)": (shoal_app.app, guarded, v2),
    }
    out: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, (app, cls, data) in cases.items():
            out[name].append(await drive(app, cls, data, requests, 64))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--requests", type=int, default=64 * 300, help="per case and round")
    p.add_argument("--json", action="store_true", help="print the rounds as JSON")
    a = p.parse_args(argv)
    result = uvloop.run(run(a.rounds, a.requests))
    if a.json:
        print(orjson.dumps(result).decode())
        return 0
    floor = min(result["floor (plain httptools)"])
    print("| case | CPU us/request, min | median | min vs floor |")
    print("|---|---:|---:|---:|")
    for name, xs in result.items():
        print(f"| {name} | {min(xs):.1f} | {statistics.median(xs):.1f} | {min(xs) / floor:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
