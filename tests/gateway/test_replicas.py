"""The gateway in front of real `shoal serve` replicas (subprocesses): a replica SIGKILLed under
load loses no request, a draining (SIGTERMed) replica gets no new requests."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from shoal import metric_names
from shoal.gateway.registry import Endpoint
from shoal.runtime.testing import ServeProcess
from tests.gateway.conftest import GatewayFactory, RunningGateway, wait_until

pytestmark = pytest.mark.timeout(180)


Adders = Callable[..., Awaitable[list[ServeProcess]]]


@pytest.fixture
async def adders() -> AsyncIterator[Adders]:
    procs: list[ServeProcess] = []

    async def start(n: int, *extra: str) -> list[ServeProcess]:
        new = [ServeProcess("examples.adder:Adder", *extra) for _ in range(n)]
        procs.extend(new)
        await asyncio.gather(*(asyncio.to_thread(p.start) for p in new))
        return new

    yield start
    await asyncio.gather(*(asyncio.to_thread(p.close) for p in procs))


class Load:
    """`workers` clients sending requests back to back until stopped; every outcome recorded."""

    def __init__(self, gw: RunningGateway, workers: int) -> None:
        self.client = httpx.AsyncClient(
            base_url=gw.url, timeout=30.0, limits=httpx.Limits(max_connections=workers)
        )
        self.outcomes: Counter[int | str] = Counter()
        self.ok = 0
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(workers)]

    async def _worker(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                resp = await self.client.post(
                    "/v1/models/adder:predict", json={"instances": [i, n]}
                )
            except httpx.HTTPError as exc:
                self.outcomes[type(exc).__name__] += 1
                continue
            self.outcomes[resp.status_code] += 1
            if resp.status_code == 200:
                assert resp.json() == {"predictions": [i + 1, n + 1]}
                self.ok += 1

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self.client.aclose()


def _retries(text: str, reason: str) -> float:
    prefix = f'{metric_names.GATEWAY_RETRIES_TOTAL}{{model="adder",reason="{reason}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


async def test_sigkill_under_load_loses_no_request(adders: Adders, gateway: GatewayFactory) -> None:
    a, b = await adders(2)
    gw = await gateway({"adder": [a.url, b.url]})
    load = Load(gw, workers=16)
    try:
        await wait_until(lambda: load.ok >= 200, timeout_s=60, what="200 answers before the kill")
        a.signal(signal.SIGKILL)
        killed_at = load.ok
        await wait_until(
            lambda: load.ok >= killed_at + 300, timeout_s=60, what="300 answers after the kill"
        )
    finally:
        await load.stop()
    assert set(load.outcomes) == {200}, load.outcomes
    metrics = (await gw.client.get("/metrics")).text
    assert _retries(metrics, "reset") + _retries(metrics, "connect") >= 1, (
        "requests in flight on the killed replica were retried"
    )


async def test_draining_replica_gets_no_new_requests(
    adders: Adders, gateway: GatewayFactory
) -> None:
    a, b = await adders(2, "--drain-quiet-s", "1", "--grace-period-s", "20")
    gw = await gateway({"adder": [a.url, b.url]})
    load = Load(gw, workers=8)
    try:
        await wait_until(lambda: load.ok >= 100, timeout_s=60, what="100 answers before the drain")
        a.signal(signal.SIGTERM)
        # The drained replica lingers until it has refused nothing for 1 s, then exits: with
        # load running, it can only exit if the gateway stopped sending it requests.
        exit_code = await asyncio.to_thread(a.wait, 30.0)
        after_exit = load.ok
        await wait_until(lambda: load.ok >= after_exit + 100, timeout_s=60, what="more answers")
    finally:
        await load.stop()
    assert exit_code == 0, a.logs()
    assert set(load.outcomes) == {200}, load.outcomes
    metrics = (await gw.client.get("/metrics")).text
    refused = _retries(metrics, "draining")
    # At most the requests already on their way when the first refusal came back (one per
    # worker); the replica may also refuse none, if it closed its connections first.
    assert refused <= 8, f"only requests already on their way were refused ({refused})"


async def test_held_burst_released_onto_a_small_queue_is_served_in_full(
    adders: Adders, gateway: GatewayFactory
) -> None:
    """Scale from zero with a burst: the first replica's queue is far smaller than the burst.
    Its queue-full refusals are held and sent again, so every request is served."""
    gw = await gateway({"adder": []})
    model = gw.app.registry.models["adder"]
    client = httpx.AsyncClient(base_url=gw.url, timeout=60.0)
    try:
        burst = [
            asyncio.create_task(client.post("/v1/models/adder:predict", json={"instances": [i]}))
            for i in range(40)
        ]
        await wait_until(lambda: len(model.hold) == 40, what="the burst held at zero")
        (rep,) = await adders(1, "--max-queue-size", "2")
        port = int(rep.url.rsplit(":", 1)[1])
        gw.app.registry.set_model("adder", [Endpoint("127.0.0.1", port)])
        results = await asyncio.gather(*burst)
    finally:
        await client.aclose()
    assert [r.status_code for r in results] == [200] * 40
    assert [r.json()["predictions"] for r in results] == [[i + 1] for i in range(40)]
    metrics = (await gw.client.get("/metrics")).text
    assert _retries(metrics, "saturated") >= 1, "the small queue did overflow"
