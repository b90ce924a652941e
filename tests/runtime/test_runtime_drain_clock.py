"""The drain's timers on a fake clock: exactly when a draining replica asks to exit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from shoal.runtime.clock import FakeClock
from shoal.runtime.errors import Draining
from shoal.runtime.lifecycle import Runtime
from shoal.runtime.loading import ModelSpec
from shoal.runtime.settings import ServeSettings

GRACE = 10.0
QUIET = 0.5


class Drain:
    """A Runtime (nothing loaded: the drain only counts admitted work) on a FakeClock."""

    def __init__(self) -> None:
        self.clock = FakeClock(start=100.0)
        settings = ServeSettings(
            models=[ModelSpec("m", "unused:Model")], grace_period_s=GRACE, drain_quiet_s=QUIET
        )
        self.runtime = Runtime(settings, clock=self.clock)
        self.exits: list[float] = []
        self.runtime.request_exit = lambda: self.exits.append(self.clock.time())
        self.plane = self.runtime.plane

    async def settle(self, done: Callable[[], bool]) -> None:
        """Let the drain task run until `done()` (it reacts within a few loop turns)."""
        for _ in range(1000):
            if done():
                return
            await asyncio.sleep(0)
        raise AssertionError("the drain task never got there")

    async def waits_until(self, when: float) -> None:
        """Wait until the drain sleeps until `when` on the fake clock."""
        await self.settle(lambda: self.runtime.drain_wake == when and self.clock.pending() > 0)

    def asleep(self) -> bool:
        """The drain sleeps on a timer in the future (it has reacted to the last advance)."""
        wake = self.runtime.drain_wake
        return wake is not None and wake > self.clock.time() and self.clock.pending() > 0

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def refuse(self) -> None:
        with pytest.raises(Draining):
            self.plane.admit()


async def test_idle_replica_exits_after_the_quiet_period() -> None:
    d = Drain()
    d.runtime.begin_drain()
    await d.waits_until(100.0 + QUIET)
    await d.advance(QUIET - 0.01)
    await d.waits_until(100.0 + QUIET)
    assert d.exits == []
    await d.advance(0.01)
    await d.settle(lambda: bool(d.exits))
    assert d.exits == [100.0 + QUIET]


async def test_each_refused_request_restarts_the_quiet_period() -> None:
    d = Drain()
    d.runtime.begin_drain()
    await d.waits_until(100.0 + QUIET)
    await d.advance(0.3)
    d.refuse()  # a client still arrives at 100.3: it got 503 + x-shoal-draining
    await d.advance(0.2)  # 100.5: the first quiet timer rings, but it was quiet for 0.2 s only
    await d.waits_until(100.3 + QUIET)
    assert d.exits == []
    await d.advance(0.3)  # 100.8
    await d.settle(lambda: bool(d.exits))
    assert d.exits == [100.3 + QUIET]


async def test_admitted_work_is_waited_for_then_the_quiet_period() -> None:
    d = Drain()
    d.plane.admit()  # one request in flight when SIGTERM comes
    d.runtime.begin_drain()
    await d.waits_until(100.0 + GRACE)
    await d.advance(2.0)
    assert d.exits == []
    d.plane.release()  # answered at 102.0
    await d.waits_until(102.0 + QUIET)
    assert d.clock.pending() == 1  # the grace timer is gone, only the quiet one is left
    await d.advance(QUIET)
    await d.settle(lambda: bool(d.exits))
    assert d.exits == [102.0 + QUIET]


async def test_the_grace_period_ends_a_drain_that_never_finishes() -> None:
    d = Drain()
    d.plane.admit()  # never released: the model is stuck
    d.runtime.begin_drain()
    await d.waits_until(100.0 + GRACE)
    await d.advance(GRACE - 0.01)
    assert d.exits == []
    await d.advance(0.01)
    await d.settle(lambda: bool(d.exits))
    assert d.exits == [100.0 + GRACE]


async def test_the_grace_period_also_caps_the_quiet_period() -> None:
    d = Drain()
    d.runtime.begin_drain()
    await d.waits_until(100.0 + QUIET)
    for _ in range(int(GRACE / 0.25) - 1):  # clients keep coming every 250 ms
        d.refuse()
        await d.advance(0.25)
        await d.settle(d.asleep)
    assert d.exits == []
    assert d.runtime.drain_wake == 100.0 + GRACE  # 109.75 + QUIET would be later
    d.refuse()
    await d.advance(0.25)
    await d.settle(lambda: bool(d.exits))
    assert d.exits == [100.0 + GRACE]
