"""Composition through the gateway: the iris ensemble (a `shoal serve` replica) calls its two
members with `shoal.handle`, which goes to SHOAL_GATEWAY_URL, in parallel and within the
client's deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import pytest

from shoal import metric_names
from shoal.gateway.registry import Endpoint
from shoal.runtime.testing import ServeProcess
from tests.gateway.conftest import GatewayFactory, ReplicaFactory, wait_until

Serve = Callable[..., Awaitable[ServeProcess]]

pytestmark = pytest.mark.timeout(180)

ROW = [5.1, 3.5, 1.4, 0.2]  # a setosa


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    procs: list[ServeProcess] = []

    async def start(*args: str, env: dict[str, str] | None = None) -> ServeProcess:
        proc = ServeProcess(*args, env=env)
        procs.append(proc)
        await asyncio.to_thread(proc.start)
        return proc

    yield start
    await asyncio.gather(*(asyncio.to_thread(p.close) for p in procs))


def _endpoint(url: str) -> Endpoint:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return Endpoint(parts.hostname, parts.port)


async def test_iris_ensemble_calls_its_members_through_the_gateway(
    serve: Serve, gateway: GatewayFactory
) -> None:
    logistic, forest = await asyncio.gather(
        serve("iris-logistic=examples.iris:LogisticIris"),
        serve("iris-forest=examples.iris:ForestIris"),
    )
    gw = await gateway({"iris-logistic": [logistic.url], "iris-forest": [forest.url], "iris": []})
    ensemble = await serve("iris=examples.iris:IrisEnsemble", env={"SHOAL_GATEWAY_URL": gw.url})
    gw.app.registry.set_model("iris", [_endpoint(ensemble.url)])
    resp = await gw.client.post("/v1/models/iris:predict", json={"instances": [ROW]})
    assert resp.status_code == 200, resp.text
    answer = resp.json()["predictions"][0]
    assert answer["class"] == "setosa"
    assert len(answer["probabilities"]) == 3
    metrics = (await gw.client.get("/metrics")).text
    for model in ("iris", "iris-logistic", "iris-forest"):
        line = f'{metric_names.GATEWAY_REQUESTS_TOTAL}{{code="200",model="{model}"}} 1.0'
        assert line in metrics, model


async def test_ensemble_fans_out_in_parallel_within_the_deadline(
    serve: Serve, replicas: ReplicaFactory, gateway: GatewayFactory
) -> None:
    a, b = await replicas("slow-a"), await replicas("slow-b")
    for rep in (a, b):
        rep.mode = "slow"
        rep.prediction = {"class": "setosa", "probabilities": [0.9, 0.05, 0.05]}
    gw = await gateway({"slow-a": [a.url], "slow-b": [b.url], "ens": []})
    ensemble = await serve(
        "ens=examples.iris:IrisEnsemble",
        "--config-json",
        '{"members": ["slow-a", "slow-b"]}',
        env={"SHOAL_GATEWAY_URL": gw.url},
    )
    gw.app.registry.set_model("ens", [_endpoint(ensemble.url)])
    call = asyncio.create_task(
        gw.client.post(
            "/v1/models/ens:predict",
            json={"instances": [ROW]},
            headers={"x-shoal-timeout-ms": "20000"},
        )
    )
    # Both members hold a request at the same time: the handles were awaited together.
    await wait_until(lambda: len(a.seen) == 1 and len(b.seen) == 1, what="both members called")
    assert not call.done()
    a.gate.set()
    b.gate.set()
    resp = await call
    assert resp.status_code == 200, resp.text
    assert resp.json()["predictions"][0]["class"] == "setosa"
    for rep in (a, b):
        budget = int(rep.seen[0].headers["x-shoal-timeout-ms"])
        assert 0 < budget < 20000, "the members got what was left of the client's deadline"
