"""SharedTimers: many request deadlines through one underlying timer, on the manual clock
(exact, no waiting), and the loop clock's `timeout_at` built on it, on a real event loop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import pytest

from shoal.gateway.clock import LoopClock, SharedTimers, TimeoutAt
from tests.gateway.manual_clock import ManualClock


class CountingClock(ManualClock):
    """The manual clock, counting the timers armed on it."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = 0

    def call_at(self, when: float, callback: Callable[[], None]):  # type: ignore[no-untyped-def]
        self.armed += 1
        return super().call_at(when, callback)


def test_callbacks_fire_in_deadline_order_and_cancelled_ones_never() -> None:
    clock = CountingClock()
    timers = SharedTimers(clock)
    fired: list[str] = []
    t0 = clock.now
    for name, at in (("c", 3.0), ("a", 1.0), ("b", 2.0)):
        timers.call_at(t0 + at, functools.partial(fired.append, name))
    timers.call_at(t0 + 1.5, lambda: fired.append("cancelled")).cancel()
    clock.advance(0.99)
    assert fired == []
    clock.advance(0.01)
    assert fired == ["a"]
    clock.advance(5)
    assert fired == ["a", "b", "c"]
    assert len(timers) == 0
    assert clock.timers() == []  # nothing left armed once nothing waits


def test_increasing_deadlines_arm_the_underlying_clock_once() -> None:
    """The common case: one budget, later arrivals, each answered in time."""
    clock = CountingClock()
    timers = SharedTimers(clock)
    open_ = [timers.call_at(clock.now + 30 + i * 1e-3, lambda: None) for i in range(64)]
    for i in range(10_000):  # answered in order while new ones arrive
        open_.pop(0).cancel()
        open_.append(timers.call_at(clock.now + 30 + (64 + i) * 1e-3, lambda: None))
        clock.advance(1e-4)
    assert clock.armed == 1
    assert len(timers) == 64  # answered heads are popped at once


def test_an_earlier_deadline_rearms_and_a_fired_timer_rearms_at_the_next() -> None:
    clock = CountingClock()
    timers = SharedTimers(clock)
    fired: list[float] = []
    t0 = clock.now
    timers.call_at(t0 + 10, lambda: fired.append(10))
    early = timers.call_at(t0 + 1, lambda: fired.append(1))
    assert clock.armed == 2  # the earlier one took the underlying timer
    early.cancel()  # the armed timer stays; firing with nothing due re-arms at the head
    clock.advance(1)
    assert fired == []
    assert clock.timers() == [t0 + 10]
    clock.advance(9)
    assert fired == [10]


def test_cancelled_items_behind_a_slow_head_are_compacted() -> None:
    """One request stuck for its whole budget while thousands finish: the heap stays bounded."""
    clock = ManualClock()
    timers = SharedTimers(clock)
    timers.call_at(clock.now + 1, lambda: None)  # the slow one, the head
    for i in range(20_000):
        timers.call_at(clock.now + 30 + i * 1e-4, lambda: None).cancel()
        assert len(timers) <= 2 * SharedTimers.COMPACT_MIN + 2
    assert len(timers) >= 1


def test_cancel_after_firing_and_twice_is_harmless() -> None:
    clock = ManualClock()
    timers = SharedTimers(clock)
    fired: list[int] = []
    entry = timers.call_at(clock.now + 1, lambda: fired.append(1))
    clock.advance(1)
    entry.cancel()
    entry.cancel()
    assert fired == [1]
    assert len(timers) == 0


def test_timeout_at_on_shared_timers_turns_the_deadline_into_timeout_error() -> None:
    clock = ManualClock()
    timers = SharedTimers(clock)

    async def main() -> str:
        async def slow() -> str:
            try:
                async with TimeoutAt(timers, clock.now + 2):
                    await asyncio.sleep(3600)
            except TimeoutError:
                return "timed out"
            return "finished"

        async def quick() -> str:
            async with TimeoutAt(timers, clock.now + 5):
                await asyncio.sleep(0)
            return "finished"

        task = asyncio.ensure_future(slow())
        assert await quick() == "finished"
        await asyncio.sleep(0)
        clock.advance(2)
        return await task

    assert asyncio.run(main()) == "timed out"


@pytest.mark.parametrize("loop_factory", ["asyncio", "uvloop"])
def test_the_loop_clock_times_out_on_a_real_loop(loop_factory: str) -> None:
    """Production's path: `LoopClock.timeout_at` on a real loop, the deadline really passing,
    with other deadlines in flight (one shared loop timer for all of them)."""

    async def main() -> list[str]:
        clock = LoopClock()
        out: list[str] = []

        async def one(budget_s: float, work_s: float) -> None:
            try:
                async with clock.timeout_at(clock.time() + budget_s):
                    await asyncio.sleep(work_s)
                out.append(f"done {work_s}")
            except TimeoutError:
                out.append(f"timeout {budget_s}")

        await asyncio.gather(one(30, 0.01), one(0.05, 30), one(30, 0.02), one(0.1, 30))
        return sorted(out)

    if loop_factory == "uvloop":
        import uvloop

        got = uvloop.run(main())
    else:
        got = asyncio.run(main())
    assert got == ["done 0.01", "done 0.02", "timeout 0.05", "timeout 0.1"]


def test_a_failing_callback_does_not_cost_the_others_their_deadlines() -> None:
    clock = ManualClock()
    timers = SharedTimers(clock)
    fired: list[str] = []

    def boom() -> None:
        raise RuntimeError("a bug in one callback")

    timers.call_at(clock.now + 1, boom)
    timers.call_at(clock.now + 1, functools.partial(fired.append, "same time"))
    timers.call_at(clock.now + 2, functools.partial(fired.append, "later"))
    clock.advance(2)
    assert fired == ["same time", "later"]
