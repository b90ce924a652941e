"""The adaptive (work-conserving) wait mode, driven by a FakeClock: the dispatch decision
depends only on the injected clock, never on wall-clock time."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

import shoal
from shoal.runtime.batch_queue import RATE_TAU_S, Batcher, BatchPolicy
from shoal.runtime.clock import FakeClock
from tests.runtime.test_runtime_batching import Recorder, result


def make(fn: Any, clock: FakeClock, mode: str, **policy: Any) -> Batcher[Any, Any]:
    return Batcher(fn, BatchPolicy(batch_wait_mode=mode, **policy), is_async=True, clock=clock)


async def steady(b: Batcher[Any, Any], clock: FakeClock, seconds: float) -> None:
    """10 000 rows/s in full batches of 8 (each goes at once and is awaited)."""
    for _ in range(round(seconds / 0.0008)):
        for f in b.submit_many(range(8)):
            await result(f)
        clock.advance(0.0008)


def test_an_unknown_mode_fails_at_decoration() -> None:
    with pytest.raises(ValueError, match="batch_wait_mode"):
        shoal.batch(batch_wait_mode="eager")


async def test_idle_lone_request_dispatches_at_once_in_adaptive_mode() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, "adaptive", max_batch_size=32, batch_wait_timeout_s=0.005)
    fut = b.submit(1)  # clock never advanced
    assert (b.queue_depth, b.running_batches) == (0, 1)
    assert await result(fut) == 10
    assert rec.batches == [[1]]


async def test_idle_lone_request_waits_the_whole_timeout_in_hard_mode() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, "hard", max_batch_size=32, batch_wait_timeout_s=0.005)
    fut = b.submit(1)
    clock.advance(0.0049)
    assert (b.queue_depth, b.running_batches) == (1, 0)
    clock.advance(0.0001)
    assert await result(fut) == 10


async def test_a_steady_high_arrival_rate_still_waits_and_fills() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, "adaptive", max_batch_size=8, batch_wait_timeout_s=0.010)
    await steady(b, clock, seconds=1.0)  # 10 000 rows/s: the estimate converges to it
    assert b.arrival_rate() == pytest.approx(10_000, rel=0.02)
    rec.batches.clear()
    # the next rows wait for each other: 8 x 0.1 ms < 10 ms, so the batch fills
    futs = []
    for i in range(7):
        futs.append(b.submit(i))
        clock.advance(0.0001)
        assert b.queue_depth == i + 1, "adaptive mode must wait while the rate can fill it"
    futs.append(b.submit(7))  # the eighth fills it: it goes at once
    assert [await result(f) for f in futs] == [x * 10 for x in range(8)]
    assert rec.batches == [list(range(8))]


async def test_the_rate_estimate_decays_when_traffic_stops() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, "adaptive", max_batch_size=8, batch_wait_timeout_s=0.010)
    await steady(b, clock, seconds=0.2)
    high = b.arrival_rate()
    assert high > 5000
    clock.advance(RATE_TAU_S)
    assert b.arrival_rate() == pytest.approx(high * math.exp(-1), rel=1e-9)
    clock.advance(10 * RATE_TAU_S)
    assert b.arrival_rate() < 1
    # after the quiet, a lone request is not held back by the old burst's rate
    rec.batches.clear()
    fut = b.submit(99)
    assert await result(fut) == 990
    assert rec.batches == [[99]]


async def test_rows_arriving_while_the_model_is_busy_form_one_batch() -> None:
    clock, gate = FakeClock(), asyncio.Event()
    rec = Recorder(gate)
    b = make(rec, clock, "adaptive", max_batch_size=32, batch_wait_timeout_s=0.005)
    first = b.submit(1)  # idle: goes at once, then blocks on the gate
    await asyncio.sleep(0)
    backlog = b.submit_many([2, 3, 4, 5])
    assert (b.queue_depth, b.running_batches) == (4, 1)
    gate.set()
    assert await result(first) == 10
    assert [await result(f) for f in backlog] == [20, 30, 40, 50]
    assert rec.batches == [[1], [2, 3, 4, 5]]  # the backlog as one batch, no wait


async def test_after_a_batch_a_short_batch_waits_up_to_that_batch_s_duration() -> None:
    clock, gate = FakeClock(), asyncio.Event()
    rec = Recorder(gate)
    b = make(rec, clock, "adaptive", max_batch_size=32, batch_wait_timeout_s=0.005)
    first = b.submit(1)  # idle: goes at once
    await asyncio.sleep(0)
    clock.advance(0.001)  # the call takes 1 ms
    early = b.submit(2)  # queued during the call
    gate.set()
    assert await result(first) == 10
    # the batch took 1 ms: the row queued during it waits up to 1 ms for the wave behind it
    assert (b.queue_depth, b.running_batches) == (1, 0)
    clock.advance(0.0005)
    wave = b.submit_many([3, 4])
    assert b.queue_depth == 3
    clock.advance(0.0005)  # the grace is over: what is queued goes as one batch
    assert [await result(f) for f in [early, *wave]] == [20, 30, 40]
    assert rec.batches == [[1], [2, 3, 4]]
    # long after, a lone request is not held by an old grace
    clock.advance(1.0)
    assert await result(b.submit(5)) == 50
    assert rec.batches[-1] == [5]


async def test_the_grace_never_outlasts_the_batch_wait_timeout() -> None:
    clock, gate = FakeClock(), asyncio.Event()
    rec = Recorder(gate)
    b = make(rec, clock, "adaptive", max_batch_size=32, batch_wait_timeout_s=0.002)
    first = b.submit(1)
    await asyncio.sleep(0)
    late = b.submit(2)  # queued at once: its wait closes 2 ms from now
    clock.advance(0.010)  # a 10 ms call
    gate.set()
    assert await result(first) == 10
    # already past its own 2 ms: it goes now, not after a 10 ms grace
    assert await result(late) == 20
    assert rec.batches == [[1], [2]]


async def test_no_grace_when_nothing_was_queued_during_the_batch() -> None:
    clock, gate = FakeClock(), asyncio.Event()
    rec = Recorder(gate)
    b = make(rec, clock, "adaptive", max_batch_size=32, batch_wait_timeout_s=0.005)
    first = b.submit(1)
    await asyncio.sleep(0)
    clock.advance(0.001)  # a 1 ms call, nothing queued meanwhile
    gate.set()
    assert await result(first) == 10
    clock.advance(0.0001)  # one client's next request, right after its answer
    nxt = b.submit(2)
    assert (b.queue_depth, b.running_batches) == (0, 1), "a lone request goes at once"
    assert await result(nxt) == 20
