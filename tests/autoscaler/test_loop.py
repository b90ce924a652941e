"""The loop against real HTTP servers on loopback (replicas' and a gateway's /metrics, one that
never answers, one port that refuses), the watch cache as plain dicts, and a recording API
client (the API side runs for real in tests/scenarios/test_scenario_autoscale.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from shoal import metric_names as names
from shoal.operator.autoscaler import observe
from shoal.operator.autoscaler.loop import DELETION_COST, Autoscaler
from shoal.operator.autoscaler.policy import ReplicaState
from shoal.operator.autoscaler.settings import AutoscalerSettings
from shoal.operator.autoscaler.settings import from_env as settings_from_env

NS, NAME = "ns", "iris"
KEY = (NS, NAME)


class MetricsServer:
    """A real HTTP/1.1 server whose /metrics body the test sets; `hang` never answers."""

    def __init__(self, hang: bool = False, host: str = "127.0.0.1", port: int = 0) -> None:
        self.body = ""
        self.hang = hang
        self.host = host
        self.hits = 0
        self._server: asyncio.Server | None = None
        self.port = port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                self.hits += 1
                if self.hang:
                    await asyncio.sleep(3600)
                body = self.body.encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"


def replica_text(inflight: float, queued: float = 0.0, model: str = NAME) -> str:
    return (
        f"# TYPE {names.INFLIGHT_REQUESTS} gauge\n"
        f'{names.INFLIGHT_REQUESTS}{{model="{model}"}} {inflight}\n'
        f"# TYPE {names.QUEUE_DEPTH} gauge\n"
        f'{names.QUEUE_DEPTH}{{model="{model}"}} {queued}\n'
    )


def gateway_text(held: float) -> str:
    return (
        f"# TYPE {names.GATEWAY_HELD_REQUESTS} gauge\n"
        f'{names.GATEWAY_HELD_REQUESTS}{{model="{NAME}"}} {held}\n'
        f'{names.GATEWAY_HELD_REQUESTS}{{model="other"}} 99\n'
    )


def pod(name: str, port: int, ready: bool = True, deleting: bool = False) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": NS}
    if deleting:
        md["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": md,
        "spec": {"containers": [{"ports": [{"name": "http", "containerPort": port}]}]},
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def msvc(replicas: int | None, **autoscaling: Any) -> dict[str, Any]:
    a = {"minReplicas": 0, "maxReplicas": 10, "targetQueueDepth": 4, **autoscaling}
    spec: dict[str, Any] = {"model": {"class": "examples.iris:LogisticIris"}, "autoscaling": a}
    if replicas is not None:
        spec["replicas"] = replicas
    return {"metadata": {"name": NAME, "namespace": NS, "uid": "u1"}, "spec": spec}


@dataclass
class Cache:
    body: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)

    def keys(self) -> list[tuple[str, str]]:
        return [KEY] if self.body is not None else []

    def modelservice(self, key: tuple[str, str]) -> dict[str, Any] | None:
        return self.body

    def pods_of(self, key: tuple[str, str]) -> list[dict[str, Any]]:
        return self.pods


@dataclass
class Api:
    """Records writes; a scale write also moves the cached spec, as the watch would."""

    cache: Cache
    scales: list[int] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    annotations: dict[str, dict[str, str]] = field(default_factory=dict)
    fail: bool = False
    echo: bool = True

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        if self.fail:
            raise RuntimeError("API away")
        self.scales.append(replicas)
        assert self.cache.body is not None
        if self.echo:
            self.cache.body["spec"]["replicas"] = replicas

    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.statuses.append(dict(patch))

    async def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        self.annotations[name] = dict(annotations)

    async def post_event(
        self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str, now: datetime
    ) -> None:
        self.events.append(f"{reason}: {message}")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


Servers = Callable[..., Awaitable[MetricsServer]]


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    made: list[MetricsServer] = []

    async def make(hang: bool = False) -> MetricsServer:
        s = MetricsServer(hang)
        await s.start()
        made.append(s)
        return s

    yield make
    for s in made:
        await s.stop()


def make_loop(cache: Cache, api: Api, clock: Clock, **kw: Any) -> Autoscaler:
    settings = AutoscalerSettings(
        scrape_timeout_seconds=0.3,
        status_interval_seconds=0,
        window_overrides={"stable_window_s": 6.0, "panic_window_s": 1.0},
        **kw,
    )
    return Autoscaler(settings, cache, api, clock=clock)


async def test_a_burst_is_one_scale_write_with_an_event(servers: Servers) -> None:
    a, b = await servers(), await servers()
    a.body, b.body = replica_text(20, 12), replica_text(20)
    cache = Cache(msvc(2), [pod("a", a.port), pod("b", b.port)])
    api, clock = Api(cache), Clock()
    loop = make_loop(cache, api, clock)
    await loop.tick()
    await loop.settle()
    assert api.scales == [10]
    assert api.events == ["Autoscaled: 2 -> 10: burst: demand 40 needs 10 (target 4)"]
    assert api.statuses == [{"queueDepth": 40.0}]
    clock.t += 1
    await loop.tick()
    assert api.scales == [10], "written only on change"


async def test_a_write_not_yet_echoed_by_the_watch_is_not_written_again(
    servers: Servers,
) -> None:
    a = await servers()
    a.body = replica_text(40)
    cache = Cache(msvc(2), [pod("a", a.port)])
    api, clock = Api(cache, echo=False), Clock()
    loop = make_loop(cache, api, clock)
    await loop.tick()
    clock.t += 1
    await loop.tick()  # the cache still says 2
    assert api.scales == [10]
    clock.t += 11  # the echo never came: the cache is trusted again
    await loop.tick()
    assert api.scales == [10, 10]


async def test_a_silent_replica_is_unknown_not_zero(servers: Servers) -> None:
    ok, hung = await servers(), await servers(hang=True)
    ok.body = replica_text(0)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        refused = s.getsockname()[1]
    cache = Cache(
        msvc(3, scaleDownDelaySeconds=0),
        [pod("ok", ok.port), pod("hung", hung.port), pod("gone", refused)],
    )
    api, clock = Api(cache), Clock()
    loop = make_loop(cache, api, clock)
    for _ in range(10):
        started = asyncio.get_running_loop().time()
        await loop.tick()
        assert asyncio.get_running_loop().time() - started < 2.0, "a hung replica stalls a tick"
        clock.t += 1
    # Two silent replicas count as at target for scale-down: ceil((0 + 4 + 4) / 4) = 2.
    assert api.scales == [2]
    assert loop.models[KEY].silent == {"hung", "gone"}


async def test_from_zero_on_held_requests_summed_over_gateways(servers: Servers) -> None:
    g1, g2 = await servers(), await servers()
    g1.body, g2.body = gateway_text(3), gateway_text(6)
    cache = Cache(msvc(0))
    api, clock = Api(cache), Clock()
    loop = make_loop(cache, api, clock, gateway_metrics_urls=(g1.url, g2.url))
    await loop.tick()
    assert api.scales == [3]  # ceil(9 / 4)
    assert api.events[0].startswith("Autoscaled: 0 -> 3: from zero")


async def test_from_zero_does_not_wait_for_the_next_tick(servers: Servers) -> None:
    g = await servers()
    g.body = gateway_text(0)
    cache = Cache(msvc(0))
    api = Api(cache)
    settings = AutoscalerSettings(
        interval_seconds=30.0, zero_poll_seconds=0.05, gateway_metrics_urls=(g.url,)
    )
    loop = Autoscaler(settings, cache, api)
    loop.start()
    try:
        await _until(lambda: g.hits >= 3)  # the first tick, then polls of the gateway
        assert api.scales == []
        g.body = gateway_text(1)
        await _until(lambda: api.scales == [1], timeout_s=5.0)  # far less than the 30 s tick
    finally:
        await loop.stop()


async def test_scale_down_marks_the_idlest_replicas_cheapest(servers: Servers) -> None:
    busy, idle = await servers(), await servers()
    busy.body, idle.body = replica_text(3), replica_text(0)
    starting = pod("new", 1, ready=False)
    leaving = pod("old", 1, deleting=True)
    cache = Cache(
        msvc(4, scaleDownDelaySeconds=2),
        [pod("busy", busy.port), pod("idle", idle.port), starting, leaving],
    )
    api, clock = Api(cache), Clock()
    loop = make_loop(cache, api, clock)
    for _ in range(4):
        await loop.tick()
        clock.t += 1
    assert api.scales == [1]
    assert api.annotations == {"busy": {DELETION_COST: "3"}, "idle": {DELETION_COST: "0"}}
    assert busy.hits > 0
    assert idle.hits > 0


async def test_inactive_peer_and_fixed_count_do_nothing(servers: Servers) -> None:
    r = await servers()
    r.body = replica_text(100)
    cache = Cache(msvc(1), [pod("r", r.port)])
    api = Api(cache)
    await Autoscaler(AutoscalerSettings(), cache, api, active=lambda: False).run(_set_after(0.3))
    assert api.scales == []
    assert r.hits == 0
    fixed = Cache(msvc(1), [pod("r", r.port)])
    assert fixed.body is not None
    del fixed.body["spec"]["autoscaling"]
    api2 = Api(fixed)
    await make_loop(fixed, api2, Clock()).tick()
    assert api2.scales == []


async def test_a_tick_over_fixed_size_objects_scrapes_and_parses_nothing(
    servers: Servers,
) -> None:
    g = await servers()
    g.body = gateway_text(5)
    fixed = Cache(msvc(1))
    assert fixed.body is not None
    del fixed.body["spec"]["autoscaling"]
    loop = make_loop(fixed, Api(fixed), Clock(), gateway_metrics_urls=(g.url,))
    await loop.tick()
    assert g.hits == 0, "no autoscaled object: no gateway scrape"
    assert loop.models == {}
    assert loop._specs == {}


async def test_the_spec_is_parsed_once_per_generation(servers: Servers) -> None:
    cache = Cache(msvc(2, maxReplicas=5))
    assert cache.body is not None
    cache.body["metadata"]["generation"] = 1
    loop = make_loop(cache, Api(cache), Clock())
    await loop.tick()
    first = loop._specs[KEY][1]
    await loop.tick()
    assert loop._specs[KEY][1] is first, "same generation: the parsed spec is reused"
    assert loop.models[KEY].policy.config.max_replicas == 5
    cache.body["spec"]["autoscaling"]["maxReplicas"] = 7
    cache.body["metadata"]["generation"] = 2  # the API server bumps it on a spec edit
    await loop.tick()
    assert loop.models[KEY].policy.config.max_replicas == 7


async def test_the_loop_survives_an_api_that_refuses(servers: Servers) -> None:
    r = await servers()
    r.body = replica_text(40)
    cache = Cache(msvc(1), [pod("r", r.port)])
    api = Api(cache, fail=True)
    loop = Autoscaler(AutoscalerSettings(interval_seconds=0.05), cache, api)
    loop.start()
    await _until(lambda: r.hits >= 3)
    api.fail = False
    await _until(lambda: api.scales == [10])
    await asyncio.wait_for(loop.stop(), 5)
    hits = r.hits
    await asyncio.sleep(0.2)
    assert r.hits == hits, "stopped means stopped"


def test_pods_become_replica_states() -> None:
    pods = [
        pod("a", 8000),
        pod("b", 8000, ready=False),
        pod("c", 8000, deleting=True),
        {"metadata": {"name": "d"}, "status": {"phase": "Failed"}},
        {"metadata": {"name": "e"}, "status": {"phase": "Pending"}},
    ]
    got = [(t.name, t.state, t.url) for t in observe.replica_targets(pods)]
    assert got == [
        ("a", ReplicaState.READY, "http://127.0.0.1:8000/metrics"),
        ("b", ReplicaState.STARTING, "http://127.0.0.1:8000/metrics"),
        ("c", ReplicaState.TERMINATING, "http://127.0.0.1:8000/metrics"),
        ("e", ReplicaState.STARTING, None),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (replica_text(5, 2), 5.0),
        (replica_text(1, 7), 7.0),  # multi-row requests: more rows queued than requests
        (replica_text(5, model="other"), None),
        ("", None),
        # Label order, a look-alike label and metric, a timestamp, help lines.
        (
            f"# HELP {names.INFLIGHT_REQUESTS} x\n"
            f'{names.INFLIGHT_REQUESTS}{{submodel="iris",model="iris"}} 6 1700000000\n'
            f'{names.INFLIGHT_REQUESTS}_total{{model="iris"}} 100\n'
            f'{names.INFLIGHT_REQUESTS}{{model="iris2"}} 100\n',
            6.0,
        ),
        (f'{names.INFLIGHT_REQUESTS}{{model="iris"}} junk\n', None),
    ],
)
def test_replica_load(text: str, expected: float | None) -> None:
    assert observe.replica_load(text, NAME) == expected


async def _until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def _set_after(seconds: float) -> asyncio.Event:
    ev = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, ev.set)
    return ev


def test_settings_from_the_environment() -> None:
    p = "SHOAL_OPERATOR_AUTOSCALER_"
    env = {
        p + "ENABLED": "false",
        p + "INTERVAL_SECONDS": "2",
        p + "ZERO_POLL_SECONDS": "0.1",
        p + "GATEWAY_METRICS_URLS": "http://a:9090/metrics, http://b:9090/metrics",
        p + "GATEWAY_TOKEN": "t",
    }
    s = settings_from_env(env)
    assert (s.enabled, s.interval_seconds, s.zero_poll_seconds) == (False, 2.0, 0.1)
    assert s.gateway_metrics_urls == ("http://a:9090/metrics", "http://b:9090/metrics")
    assert s.gateway_token == "t"
    assert settings_from_env({}) == AutoscalerSettings()
