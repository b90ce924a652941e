"""Scale from zero: held requests are bounded, counted, released to the first ready replica, and
answered 504 at their deadline; none is lost."""

from __future__ import annotations

import asyncio

import pytest

from shoal import metric_names
from shoal.gateway.hold import HoldFull, HoldQueue
from shoal.gateway.registry import Endpoint
from tests.gateway.conftest import wait_until


async def test_hold_queue_bound_release_order_and_cancellation() -> None:
    q = HoldQueue(limit=3)
    order: list[int] = []

    async def waiter(i: int) -> None:
        assert await q.wait(30.0)
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    await wait_until(lambda: len(q) == 3, what="three held")
    with pytest.raises(HoldFull):
        await q.wait(30.0)
    tasks[1].cancel()
    await wait_until(lambda: len(q) == 2, what="cancelled waiter removed")
    assert q.release() == 2
    await asyncio.gather(tasks[0], tasks[2])
    assert order == [0, 2]
    assert len(q) == 0


async def test_hold_queue_deadline() -> None:
    q = HoldQueue(limit=1)
    assert not await q.wait(0.0), "no time left: not held at all"
    assert len(q) == 0
    assert not await q.wait(0.05), "times out"
    assert len(q) == 0


async def test_request_held_at_zero_is_released_to_first_replica(replicas, gateway) -> None:
    gw = await gateway({"cold": []})
    model = gw.app.registry.models["cold"]
    pending = [
        asyncio.create_task(gw.client.post("/v1/models/cold:predict", content=str(i).encode()))
        for i in range(5)
    ]
    await wait_until(lambda: len(model.hold) == 5, what="five requests held")
    text = (await gw.client.get("/metrics")).text
    assert f'{metric_names.GATEWAY_HELD_REQUESTS}{{model="cold"}} 5.0' in text
    rep = await replicas("warm")
    gw.app.registry.set_model("cold", [Endpoint("127.0.0.1", rep.port)])
    results = await asyncio.gather(*pending)
    assert [r.status_code for r in results] == [200] * 5
    assert sorted(r.json()["body"] for r in results) == ["0", "1", "2", "3", "4"]
    assert len(model.hold) == 0


async def test_held_request_past_its_deadline_is_504(gateway) -> None:
    gw = await gateway({"cold": []})
    resp = await gw.client.post("/v1/models/cold:predict", headers={"x-shoal-timeout-ms": "100"})
    assert resp.status_code == 504
    assert "waiting for a ready replica" in resp.json()["error"]
    assert len(gw.app.registry.models["cold"].hold) == 0


async def test_hold_bound_is_503_with_retry_after(gateway) -> None:
    gw = await gateway({"cold": []}, max_held_per_model=2)
    model = gw.app.registry.models["cold"]
    held = [
        asyncio.create_task(
            gw.client.post("/v1/models/cold:predict", headers={"x-shoal-timeout-ms": "20000"})
        )
        for _ in range(2)
    ]
    await wait_until(lambda: len(model.hold) == 2, what="bound reached")
    resp = await gw.client.post("/v1/models/cold:predict")
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert "already waiting" in resp.json()["error"]
    for t in held:
        t.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    await wait_until(lambda: len(model.hold) == 0, what="cancelled clients leave the queue")


async def test_model_with_no_way_to_get_a_replica_is_503(gateway) -> None:
    gw = await gateway({"cold": []}, max_held_per_model=0)
    resp = await gw.client.post("/v1/models/cold:predict")
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert "no ready replica" in resp.json()["error"]


async def test_removed_model_releases_its_held_requests_with_503(gateway) -> None:
    gw = await gateway({"cold": []})
    model = gw.app.registry.models["cold"]
    task = asyncio.create_task(gw.client.post("/v1/models/cold:predict"))
    await wait_until(lambda: len(model.hold) == 1, what="held")
    gw.app.registry.remove_model("cold")
    resp = await task
    assert resp.status_code == 503
    assert (await gw.client.post("/v1/models/cold:predict")).status_code == 404


async def test_rolling_update_holds_when_the_only_replica_drains(replicas, gateway) -> None:
    old = await replicas("old")
    old.mode = "draining"
    gw = await gateway({"m": [old.url]})
    model = gw.app.registry.models["m"]
    task = asyncio.create_task(gw.client.post("/v1/models/m:predict"))
    await wait_until(lambda: len(model.hold) == 1, what="held after the drain answer")
    new = await replicas("new")
    gw.app.registry.set_model("m", [Endpoint("127.0.0.1", new.port)])
    resp = await task
    assert resp.status_code == 200
    assert resp.json()["replica"] == "new"


async def test_busy_replica_refusal_is_held_and_sent_again(replicas, gateway) -> None:
    rep = await replicas("busy")
    rep.mode = "busy"
    rep.busy_left = 3
    gw = await gateway({"m": [rep.url]})
    resp = await gw.client.post("/v1/models/m:predict", content=b"x")
    assert resp.status_code == 200
    assert len(rep.seen) == 4, "three refusals, then served"
    text = (await gw.client.get("/metrics")).text
    assert f'{metric_names.GATEWAY_RETRIES_TOTAL}{{model="m",reason="saturated"}} 3.0' in text


async def test_busy_replica_until_the_deadline_is_504(replicas, gateway) -> None:
    rep = await replicas("busy")
    rep.mode = "busy"
    rep.busy_left = 10**9
    gw = await gateway({"m": [rep.url]})
    resp = await gw.client.post("/v1/models/m:predict", headers={"x-shoal-timeout-ms": "300"})
    assert resp.status_code == 504
    assert "busy" in resp.json()["error"]


async def test_busy_refusal_passes_through_when_holding_is_off(replicas, gateway) -> None:
    rep = await replicas("busy")
    rep.mode = "busy"
    rep.busy_left = 1
    gw = await gateway({"m": [rep.url]}, max_held_per_model=0)
    resp = await gw.client.post("/v1/models/m:predict")
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert resp.json() == {"error": "queue full"}
