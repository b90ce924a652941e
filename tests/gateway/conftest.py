"""Gateway test fixtures: small real upstream servers (uvicorn on loopback ports) whose behaviour
each test steers, and a real gateway listening on loopback in the same event loop."""

from __future__ import annotations

import asyncio
import random
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from shoal.gateway.app import GatewayApp
from shoal.gateway.clock import Clock
from shoal.gateway.settings import GatewaySettings, StaticUpstream
from shoal.runtime.testing import shoal_command
from tests.gateway.manual_clock import ManualClock

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def wait_until(cond: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    """Wait for a condition with a named deadline (polling; never used as a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or cond}")
        await asyncio.sleep(0.01)


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    client_port: int


@dataclass
class FakeReplica:
    """An upstream replica. Answers JSON naming itself; `mode` steers what it does."""

    ident: str
    mode: str = "ok"
    """ok | draining | busy (503 + Retry-After while `busy_left` > 0) | slow (waits for `gate`)
    | stream (chunks from `chunks`)"""
    busy_left: int = 0
    seen: list[Seen] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    chunks: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    prediction: object = None
    big_body: int = 0
    """When > 0, answer with a body of this many bytes (a large response)."""
    """When set, answer like a KServe V1 model: {"predictions": [prediction]}."""
    port: int = 0
    server: uvicorn.Server | None = None
    task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        self.seen.append(
            Seen(
                scope["method"],
                scope["path"],
                scope["query_string"].decode(),
                {k.decode(): v.decode() for k, v in scope["headers"]},
                body,
                scope["client"][1],
            )
        )
        if self.mode == "draining":
            await _send_json(
                send,
                503,
                {"error": "replica is draining"},
                [(b"retry-after", b"1"), (b"x-shoal-draining", b"1")],
            )
            return
        if self.mode == "busy" and self.busy_left > 0:
            self.busy_left -= 1
            await _send_json(send, 503, {"error": "queue full"}, [(b"retry-after", b"1")])
            return
        if self.mode == "slow":
            await self.gate.wait()
        if self.mode == "stream":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            while (chunk := await self.chunks.get()) is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        if self.big_body:
            await _send_json(send, 200, "x" * self.big_body, [])
            return
        if self.prediction is not None:
            await _send_json(send, 200, {"predictions": [self.prediction]}, [])
            return
        await _send_json(
            send,
            200,
            {
                "replica": self.ident,
                "path": scope["path"],
                "timeout_ms": dict(scope["headers"]).get(b"x-shoal-timeout-ms", b"").decode(),
                "body": body.decode(),
            },
            [(b"x-replica", self.ident.encode())],
        )

    async def start(self) -> None:
        config = uvicorn.Config(
            self, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        server = self.server
        await wait_until(lambda: server.started, what=f"replica {self.ident} to listen")
        self.port = server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.gate.set()
            self.chunks.put_nowait(None)
            self.server.should_exit = True
            await self.task


async def _send_json(
    send: Send, status: int, obj: object, headers: list[tuple[bytes, bytes]]
) -> None:
    body = orjson.dumps(obj)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


ReplicaFactory = Callable[[str], Awaitable[FakeReplica]]
"""`await replicas("name")` starts a FakeReplica on a loopback port."""


@pytest.fixture
async def replicas() -> AsyncIterator[ReplicaFactory]:
    started: list[FakeReplica] = []

    async def make(ident: str) -> FakeReplica:
        rep = FakeReplica(ident)
        await rep.start()
        started.append(rep)
        return rep

    yield make
    for rep in started:
        await rep.stop()


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock to pass as `gateway(..., clock=clock)`: timers fire on `advance`."""
    return ManualClock()


@dataclass
class RunningGateway:
    app: GatewayApp
    client: httpx.AsyncClient

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.app.port}"


GatewayFactory = Callable[..., Awaitable[RunningGateway]]
"""`await gateway({"m": [url, ...]}, clock=..., **settings)` starts a gateway on loopback."""


@pytest.fixture
async def gateway() -> AsyncIterator[GatewayFactory]:
    running: list[RunningGateway] = []

    async def make(
        upstreams: dict[str, list[str]] | None = None,
        seed: int = 7,
        clock: Clock | None = None,
        **overrides: Any,
    ) -> RunningGateway:
        static = tuple(StaticUpstream(m, tuple(u)) for m, u in (upstreams or {}).items())
        settings = replace(GatewaySettings(host="127.0.0.1", port=0, static=static), **overrides)
        app = GatewayApp(settings, clock=clock, rng=random.Random(seed))
        await app.start()
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.port}", timeout=10.0)
        gw = RunningGateway(app, client)
        running.append(gw)
        await wait_until(lambda: app.registry.synced, what="static discovery")
        return gw

    yield make
    for gw in running:
        await gw.client.aclose()
        await gw.app.stop(grace_s=1.0)


class GatewayProcess:
    """`shoal gateway --host 127.0.0.1 --port 0 ARGS` as a real process; `port` once listening."""

    def __init__(self, args: list[str], workdir: Path, preexec: Callable[[], None] | None = None):
        self.port_file = workdir / "gateway.port"
        self.log_file = workdir / "gateway.log"
        argv = [*shoal_command(), "gateway", "--host", "127.0.0.1", "--port", "0"]
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(
                [*argv, "--port-file", str(self.port_file), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec,
            )
        self.port = 0

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace")

    async def listening(self) -> int:
        port_file, proc = self.port_file, self.proc
        await wait_until(
            lambda: (port_file.exists() and port_file.read_text() != "") or proc.poll() is not None,
            timeout_s=60,
            what="gateway to listen",
        )
        assert proc.poll() is None, self.logs()
        self.port = int(port_file.read_text())
        return self.port

    async def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return await asyncio.to_thread(self.proc.wait, 30)
