"""Scale from zero: held requests are bounded, counted, released to the first ready replica, and
answered 504 at their deadline; none is lost. Deadlines run on a manual clock: the tests move
time, nothing waits for it."""

from __future__ import annotations

import asyncio

import pytest
from httpx import Response

from shoal import metric_names
from shoal.gateway.hold import HoldFull, HoldQueue
from shoal.gateway.registry import Endpoint
from tests.gateway.conftest import (
    FakeReplica,
    GatewayFactory,
    ReplicaFactory,
    RunningGateway,
    wait_until,
)
from tests.gateway.manual_clock import ManualClock


async def test_hold_queue_bound_release_order_and_cancellation(clock: ManualClock) -> None:
    q = HoldQueue(limit=3, clock=clock)
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


async def test_hold_queue_deadline(clock: ManualClock) -> None:
    q = HoldQueue(limit=1, clock=clock)
    assert not await q.wait(0.0), "no time left: not held at all"
    assert len(q) == 0
    waiting = asyncio.create_task(q.wait(5.0))
    await wait_until(lambda: len(q) == 1, what="held")
    clock.advance(4.999)
    await asyncio.sleep(0)  # one loop turn: nothing may have happened
    assert not waiting.done()
    clock.advance(0.001)
    assert not await waiting, "times out exactly at its deadline"
    assert len(q) == 0


async def _advance_until_done(
    clock: ManualClock, task: asyncio.Task[Response], gw: RunningGateway, rep: FakeReplica
) -> None:
    """Each time the request waits for room, move time past that wait (and nothing more)."""
    model = gw.app.registry.models["m"]
    while not task.done():
        await wait_until(lambda: len(model.hold) > 0 or task.done(), what="held or answered")
        if task.done():
            return
        sent = len(rep.seen)
        (hold_timer,) = [t for t in clock.timers() if t < clock.now + 5]
        clock.advance(hold_timer - clock.now)
        await wait_until(lambda: len(rep.seen) > sent or task.done(), what="sent again")  # noqa: B023


async def test_request_held_at_zero_is_released_to_first_replica(
    replicas: ReplicaFactory, gateway: GatewayFactory
) -> None:
    gw = await gateway({"cold": []})
    model = gw.app.registry.models["cold"]
    pending = [
        asyncio.create_task(gw.client.post("/v1/models/cold:predict", content=str(i).encode()))
        for i in range(5)
    ]
    await wait_until(lambda: len(model.hold) == 5, what="five requests held")
    text = (await gw.client.get("/metrics")).text  # no tokens configured: open
    assert f'{metric_names.GATEWAY_HELD_REQUESTS}{{model="cold"}} 5.0' in text
    rep = await replicas("warm")
    gw.app.registry.set_model("cold", [Endpoint("127.0.0.1", rep.port)])
    results = await asyncio.gather(*pending)
    assert [r.status_code for r in results] == [200] * 5
    assert sorted(r.json()["body"] for r in results) == ["0", "1", "2", "3", "4"]
    assert len(model.hold) == 0


async def test_held_request_past_its_deadline_is_504(
    gateway: GatewayFactory, clock: ManualClock
) -> None:
    gw = await gateway({"cold": []}, clock=clock)
    model = gw.app.registry.models["cold"]
    task = asyncio.create_task(
        gw.client.post("/v1/models/cold:predict", headers={"x-shoal-timeout-ms": "100"})
    )
    await wait_until(lambda: len(model.hold) == 1, what="held")
    clock.advance(0.099)
    await asyncio.sleep(0)
    assert len(model.hold) == 1, "still held before its deadline"
    clock.advance(0.001)
    resp = await task
    assert resp.status_code == 504
    assert "waiting for a ready replica" in resp.json()["error"]
    assert len(gw.app.registry.models["cold"].hold) == 0


async def test_hold_bound_is_503_with_retry_after(gateway: GatewayFactory) -> None:
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


async def test_model_with_no_way_to_get_a_replica_is_503(gateway: GatewayFactory) -> None:
    gw = await gateway({"cold": []}, max_held_per_model=0)
    resp = await gw.client.post("/v1/models/cold:predict")
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert "no ready replica" in resp.json()["error"]


async def test_removed_model_releases_its_held_requests_with_503(
    gateway: GatewayFactory,
) -> None:
    gw = await gateway({"cold": []})
    model = gw.app.registry.models["cold"]
    task = asyncio.create_task(gw.client.post("/v1/models/cold:predict"))
    await wait_until(lambda: len(model.hold) == 1, what="held")
    gw.app.registry.remove_model("cold")
    resp = await task
    assert resp.status_code == 503
    assert (await gw.client.post("/v1/models/cold:predict")).status_code == 404


async def test_rolling_update_holds_when_the_only_replica_drains(
    replicas: ReplicaFactory, gateway: GatewayFactory
) -> None:
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


async def test_busy_replica_refusal_is_held_and_sent_again(
    replicas: ReplicaFactory, gateway: GatewayFactory, clock: ManualClock
) -> None:
    rep = await replicas("busy")
    rep.mode = "busy"
    rep.busy_left = 3
    gw = await gateway({"m": [rep.url]}, clock=clock)
    task = asyncio.create_task(gw.client.post("/v1/models/m:predict", content=b"x"))
    await _advance_until_done(clock, task, gw, rep)
    resp = task.result()
    assert resp.status_code == 200
    assert len(rep.seen) == 4, "three refusals, then served"
    assert clock.now == pytest.approx(1000.0 + 0.05 + 0.1 + 0.2), "waits doubled from 50 ms"
    text = (await gw.client.get("/metrics")).text  # no tokens configured: open
    assert f'{metric_names.GATEWAY_RETRIES_TOTAL}{{model="m",reason="saturated"}} 3.0' in text


async def test_busy_replica_until_the_deadline_is_504(
    replicas: ReplicaFactory, gateway: GatewayFactory, clock: ManualClock
) -> None:
    rep = await replicas("busy")
    rep.mode = "busy"
    rep.busy_left = 10**9
    gw = await gateway({"m": [rep.url]}, clock=clock)
    task = asyncio.create_task(
        gw.client.post("/v1/models/m:predict", headers={"x-shoal-timeout-ms": "300"})
    )
    await _advance_until_done(clock, task, gw, rep)
    resp = task.result()
    assert resp.status_code == 504
    assert "busy" in resp.json()["error"]


async def test_busy_refusal_passes_through_when_holding_is_off(
    replicas: ReplicaFactory, gateway: GatewayFactory
) -> None:
    rep = await replicas("busy")
    rep.mode = "busy"
    rep.busy_left = 1
    gw = await gateway({"m": [rep.url]}, max_held_per_model=0)
    resp = await gw.client.post("/v1/models/m:predict")
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert resp.json() == {"error": "queue full"}
