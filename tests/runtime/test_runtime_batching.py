"""@shoal.batch semantics, driven by a FakeClock: no test here waits on wall-clock time."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

import shoal
from shoal.runtime.batch_queue import Batcher, BatchPolicy
from shoal.runtime.clock import FakeClock
from shoal.runtime.errors import (
    ClientGone,
    DeadlineExceeded,
    InvalidInput,
    ModelError,
    QueueFull,
)
from shoal.runtime.isolation import retry_budget
from shoal.runtime.model import ServedModel


async def until(condition: Callable[[], bool], what: str = "the condition") -> None:
    """Yield to the loop until `condition()` holds (a wait on state, with a deadline)."""
    try:
        async with asyncio.timeout(5):
            while not condition():  # noqa: ASYNC110 (the batcher's state has no event)
                await asyncio.sleep(0)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def result(fut: asyncio.Future[Any]) -> Any:
    return await asyncio.wait_for(fut, timeout=5)


class Recorder:
    """An async batch function that records its batches; optionally gated."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.gate = gate

    async def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        return [x * 10 for x in items]


def make(
    fn: Any, clock: FakeClock, on_retry: Callable[[int], None] | None = None, **policy: Any
) -> Batcher[Any, Any]:
    return Batcher(
        fn,
        BatchPolicy(**{"batch_wait_mode": "hard", **policy}),
        is_async=True,
        clock=clock,
        on_retry=on_retry,
    )


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_batch_size": 0}, ValueError),
        ({"max_batch_size": 2.5}, TypeError),
        ({"batch_wait_timeout_s": -1}, ValueError),
        ({"batch_wait_timeout_s": float("nan")}, ValueError),
        ({"batch_wait_timeout_s": "1"}, TypeError),
        ({"max_concurrent_batches": 0}, ValueError),
        ({"max_queue_size": 0}, ValueError),
        ({"isolate_failures": "yes"}, TypeError),
    ],
)
def test_bad_arguments_fail_at_decoration(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        shoal.batch(**kwargs)


async def test_timer_starts_at_first_queued_item() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, max_batch_size=10, batch_wait_timeout_s=0.010)
    first = b.submit(1)
    clock.advance(0.006)
    second = b.submit(2)  # joins the batch whose timer started with item 1
    clock.advance(0.003)
    # 9 ms after the first item: still waiting (dispatch is synchronous, so this is final)
    assert (b.queue_depth, b.running_batches) == (2, 0)
    clock.advance(0.001)
    assert (b.queue_depth, b.running_batches) == (0, 1)
    assert await result(first) == 10
    assert await result(second) == 20
    assert rec.batches == [[1, 2]]


async def test_full_batch_goes_at_once() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, max_batch_size=3, batch_wait_timeout_s=10.0)
    futs = b.submit_many([1, 2, 3])
    assert [await result(f) for f in futs] == [10, 20, 30]  # clock never advanced
    assert rec.batches == [[1, 2, 3]]


async def test_batch_is_formed_from_backlog_when_model_frees() -> None:
    clock, gate = FakeClock(), asyncio.Event()
    rec = Recorder(gate)
    b = make(rec, clock, max_batch_size=4, batch_wait_timeout_s=0.010)
    first = b.submit_many([1, 2, 3, 4])  # full: starts now, blocks on the gate
    await until(lambda: len(rec.batches) == 1, "the first batch to start")
    backlog = b.submit_many([5, 6, 7, 8, 9, 10])
    # one batch slot: the backlog waits, nothing pre-formed
    assert (b.queue_depth, b.running_batches) == (6, 1)
    gate.set()
    assert [await result(f) for f in first] == [10, 20, 30, 40]
    for f in backlog[:4]:
        await result(f)
    assert rec.batches[1] == [5, 6, 7, 8]  # the backlog, up to max_batch_size, at once
    # two left, and no batch running: their timer (from item 5) has not run out
    assert (b.queue_depth, b.running_batches, len(rec.batches)) == (2, 0, 2)
    clock.advance(0.010)
    assert [await result(f) for f in backlog[4:]] == [90, 100]
    assert rec.batches[2] == [9, 10]


async def test_item_that_already_waited_is_not_made_to_wait_again() -> None:
    clock, gate = FakeClock(), asyncio.Event()
    rec = Recorder(gate)
    b = make(rec, clock, max_batch_size=4, batch_wait_timeout_s=0.010)
    busy = b.submit_many([1, 2, 3, 4])
    await until(lambda: len(rec.batches) == 1, "the first batch to start")
    late = b.submit(5)
    clock.advance(0.050)  # model busy for 50 ms: item 5 waited longer than the timeout
    gate.set()
    for f in busy:
        await result(f)
    assert await result(late) == 50  # dispatched as soon as the slot freed, no new timer
    assert rec.batches[1] == [5]


async def test_cancelled_requests_are_dropped() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, max_batch_size=10, batch_wait_timeout_s=0.01)
    a, keep = b.submit(1), b.submit(2)
    a.cancel()
    clock.advance(0.01)
    assert await result(keep) == 20
    assert rec.batches == [[2]]


async def test_wrong_output_length_fails_every_request_with_a_clear_error() -> None:
    clock = FakeClock()

    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    b = make(short, clock, max_batch_size=2, batch_wait_timeout_s=0.01)
    futs = b.submit_many([1, 2])
    for f in futs:
        with pytest.raises(ModelError, match="returned 1 results for a batch of 2"):
            await result(f)


async def test_exception_resolves_every_future_and_the_batcher_keeps_working() -> None:
    clock = FakeClock()
    calls = 0

    async def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return items

    # isolate_failures=False: Ray Serve's rule, the whole batch fails together
    b = make(flaky, clock, max_batch_size=2, batch_wait_timeout_s=0.01, isolate_failures=False)
    failed = b.submit_many([1, 2])
    for f in failed:
        with pytest.raises(ModelError, match="RuntimeError: boom"):
            await result(f)
    ok = b.submit_many([3, 4])
    assert [await result(f) for f in ok] == [3, 4]
    assert calls == 2  # nothing was retried


class PicksOnNegatives:
    """A vectorised model that raises for the whole batch when any row is negative, as numpy
    and scikit-learn do; records every call it gets."""

    def __init__(self, error: type[Exception] = ValueError) -> None:
        self.calls: list[list[int]] = []
        self.error = error

    def compute(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        bad = [x for x in items if x < 0]
        if bad:
            raise self.error(f"negative input {bad[0]}")
        return [x * 10 for x in items]

    async def __call__(self, items: list[int]) -> list[int]:
        return self.compute(items)


async def test_one_bad_row_fails_only_its_own_request() -> None:
    clock, model = FakeClock(), PicksOnNegatives()
    retries: list[int] = []
    b = make(model, clock, on_retry=retries.append, max_batch_size=8, batch_wait_timeout_s=0.01)
    futs = b.submit_many([1, 2, 3, -4, 5, 6, 7, 8])  # full: runs at once
    for f, want in zip(futs, [10, 20, 30, None, 50, 60, 70, 80], strict=True):
        if want is None:
            with pytest.raises(InvalidInput, match="negative input -4"):  # its client's 400
                await result(f)
        else:
            assert await result(f) == want
    # bisection: 8 -> 4+4 -> 2+2 -> 1+1, two calls a level
    assert retries == [6]
    assert model.calls[1:] == [[1, 2, 3, -4], [5, 6, 7, 8], [1, 2], [3, -4], [3], [-4]]


async def test_a_failure_that_does_not_recur_costs_two_calls_and_fails_nobody() -> None:
    clock = FakeClock()
    calls: list[list[int]] = []

    async def once(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("transient")
        return items

    b = make(once, clock, max_batch_size=4, batch_wait_timeout_s=0.01)
    futs = b.submit_many([1, 2, 3, 4])
    assert [await result(f) for f in futs] == [1, 2, 3, 4]
    assert calls == [[1, 2, 3, 4], [1, 2], [3, 4]]


async def test_isolation_is_bounded_when_every_row_fails() -> None:
    clock, model = FakeClock(), PicksOnNegatives(RuntimeError)
    retries: list[int] = []
    b = make(model, clock, on_retry=retries.append, max_batch_size=16, batch_wait_timeout_s=0)
    futs = b.submit_many([-x - 1 for x in range(16)])
    outcomes = [await asyncio.gather(f, return_exceptions=True) for f in futs]
    errors = [o[0] for o in outcomes]
    assert all(isinstance(e, ModelError) for e in errors)
    assert retries == [retry_budget(16)] == [16]  # 4 * log2(16), not a call per row
    assert len(model.calls) == 1 + retry_budget(16)


async def test_a_wrong_result_length_is_not_bisected() -> None:
    clock = FakeClock()
    calls: list[list[int]] = []

    async def short(items: list[int]) -> list[int]:
        calls.append(items)
        if len(items) == 4:
            raise ValueError("one of them")
        return items[:-1]  # the model's own bug: every half is wrong too

    b = make(short, clock, max_batch_size=4, batch_wait_timeout_s=0)
    futs = b.submit_many([1, 2, 3, 4])
    for f in futs:
        with pytest.raises(ModelError, match="returned 1 results for a batch of 2"):
            await result(f)
    assert len(calls) == 3  # the batch and its two halves, no deeper


async def test_sync_batches_are_isolated_in_their_worker_thread() -> None:
    clock, model = FakeClock(), PicksOnNegatives(TypeError)
    retries: list[int] = []
    b: Batcher[int, int] = Batcher(
        model.compute, BatchPolicy(max_batch_size=4), clock=clock, on_retry=retries.append
    )
    futs = b.submit_many([1, -2, 3, 4])
    got = [await asyncio.gather(f, return_exceptions=True) for f in futs]
    assert [g[0] for g in got if not isinstance(g[0], BaseException)] == [10, 30, 40]
    assert isinstance(got[1][0], InvalidInput)  # a TypeError for one row: 400
    assert retries == [4]
    await b.aclose()


async def test_an_exception_returned_for_one_item_fails_only_that_item() -> None:
    clock = FakeClock()

    async def picky(items: list[int]) -> list[Any]:
        return [ValueError(f"bad {x}") if x < 0 else KeyError(x) if x == 0 else x for x in items]

    b = make(picky, clock, max_batch_size=3, batch_wait_timeout_s=0.01)
    good, bad, broken = b.submit_many([1, -1, 0])
    assert await result(good) == 1
    with pytest.raises(InvalidInput, match="bad -1"):  # the model rejected this input: 400
        await result(bad)
    with pytest.raises(ModelError, match="KeyError"):  # any other failure: 500
        await result(broken)


async def test_queue_bound_refuses_all_or_nothing() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, max_batch_size=10, batch_wait_timeout_s=0.01, max_queue_size=3)
    b.submit_many([1, 2])
    with pytest.raises(QueueFull, match="queue is full"):
        b.submit_many([3, 4])
    assert b.queue_depth == 2  # nothing of the refused request was queued
    b.submit(3)
    with pytest.raises(QueueFull):
        b.submit(4)
    with pytest.raises(InvalidInput, match="4 rows cannot fit a queue of 3"):
        b.submit_many([1, 2, 3, 4])


async def test_concurrent_batches_run_together() -> None:
    clock, gate = FakeClock(), asyncio.Event()
    rec = Recorder(gate)
    b = make(rec, clock, max_batch_size=1, batch_wait_timeout_s=0.01, max_concurrent_batches=2)
    futs = b.submit_many([1, 2, 3])
    await until(lambda: len(rec.batches) == 2, "two batches to start")
    assert rec.batches == [[1], [2]]  # two running, the third waits for a slot
    assert (b.running_batches, b.queue_depth) == (2, 1)
    gate.set()
    assert [await result(f) for f in futs] == [10, 20, 30]


async def test_sync_function_runs_in_a_worker_thread() -> None:
    clock = FakeClock()
    threads: list[str] = []

    def sync(items: list[int]) -> list[int]:
        threads.append(threading.current_thread().name)
        return [x + 1 for x in items]

    b: Batcher[int, int] = Batcher(sync, BatchPolicy(max_batch_size=2), clock=clock)
    futs = b.submit_many([1, 2])
    assert [await result(f) for f in futs] == [2, 3]
    assert threads
    assert threads[0] != threading.main_thread().name
    await b.aclose()


async def test_methods_get_one_batcher_per_instance() -> None:
    clock = FakeClock()

    class Model:
        def __init__(self, k: int) -> None:
            self.k = k
            self.batches: list[list[int]] = []

        @shoal.batch(
            max_batch_size=2, batch_wait_timeout_s=0.01, batch_wait_mode="hard", clock=clock
        )
        async def __call__(self, items: list[int]) -> list[int]:
            self.batches.append(items)
            return [x * self.k for x in items]

    m2, m3 = Model(2), Model(3)
    r = await asyncio.gather(m2(1), m2(2), m3(1), m3(2))
    assert list(r) == [2, 4, 3, 6]
    assert m2.batches == [[1, 2]]
    assert m3.batches == [[1, 2]]


async def test_plain_function_decorator() -> None:
    clock = FakeClock()

    @shoal.batch(max_batch_size=3, batch_wait_timeout_s=0.01, clock=clock)
    async def double(items: list[int]) -> list[int]:
        return [2 * x for x in items]

    assert list(await asyncio.gather(double(1), double(2), double(3))) == [2, 4, 6]


async def test_deadline_drops_a_queued_request() -> None:
    clock, gate = FakeClock(), asyncio.Event()
    rec = Recorder(gate)

    class M:
        @shoal.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
        async def __call__(self, items: list[int]) -> list[int]:
            return await rec(items)

    model = ServedModel("m", M(), clock=clock)
    await model.start()
    running = asyncio.ensure_future(model.infer([1], clock.time() + 10))
    queued = asyncio.ensure_future(model.infer([2], clock.time() + 0.5))
    batcher = model.batcher
    assert batcher is not None
    await until(lambda: batcher.queue_depth == 1 and len(rec.batches) == 1, "both queued")
    clock.advance(0.5)
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(queued, 5)
    gate.set()
    assert await asyncio.wait_for(running, 5) == [10]
    # the expired request never reached the model, and nothing is left to run
    assert (batcher.queue_depth, batcher.running_batches) == (0, 0)
    assert rec.batches == [[1]]
    await model.aclose()


async def test_multi_row_request_is_split_and_reassembled_across_batches() -> None:
    clock, rec = FakeClock(), Recorder()

    class M:
        @shoal.batch(max_batch_size=3, batch_wait_timeout_s=0.01, batch_wait_mode="hard")
        async def __call__(self, items: list[int]) -> list[int]:
            return await rec(items)

    model = ServedModel("m", M(), clock=clock)
    await model.start()
    a = asyncio.ensure_future(model.infer([1, 2], clock.time() + 10))
    b = asyncio.ensure_future(model.infer([3, 4, 5], clock.time() + 10))
    batcher = model.batcher
    assert batcher is not None
    # 5 rows queued, max_batch_size 3: the first batch is full and runs at once
    await until(lambda: len(rec.batches) == 1 and batcher.running_batches == 0, "batch 1")
    assert batcher.queue_depth == 2
    clock.advance(0.01)  # the rest's timer (from their enqueue) runs out
    assert await asyncio.wait_for(a, 5) == [10, 20]
    assert await asyncio.wait_for(b, 5) == [30, 40, 50]
    assert rec.batches == [[1, 2, 3], [4, 5]]  # rows of two requests shared a batch
    await model.aclose()


async def test_runtime_overrides_beat_the_decorator() -> None:
    class M:
        @shoal.batch(max_batch_size=2, batch_wait_timeout_s=0.5)
        async def __call__(self, items: list[int]) -> list[int]:
            return items

    model = ServedModel("m", M(), overrides={"max_batch_size": 7, "batch_wait_timeout_s": None})
    await model.start()
    assert model.batcher is not None
    assert model.batcher.policy.max_batch_size == 7
    assert model.batcher.policy.batch_wait_timeout_s == 0.5
    await model.aclose()


async def test_rows_of_a_client_that_left_are_dropped_when_the_batch_forms() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, max_batch_size=10, batch_wait_timeout_s=0.01)
    left = {"gone": False}
    lost = b.submit_many([1, 2], gone=lambda: left["gone"])
    kept = b.submit(3)
    left["gone"] = True
    clock.advance(0.01)
    assert await result(kept) == 30
    assert rec.batches == [[3]]
    for f in lost:
        with pytest.raises(ClientGone):
            await result(f)
