"""The gateway's time: what the request path reads (`time`), the timers it arms (`call_at`) and
the deadlines it waits under (`timeout_at`). Production uses the event loop's own; tests inject a
manual clock and advance it, so deadlines, holds and idle timers are exercised exactly, without
waiting."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def time(self) -> float:
        """Seconds on a monotonic scale (the loop's time in production)."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` once `time()` reaches `when`."""
        ...

    def timeout_at(self, when: float) -> AbstractAsyncContextManager[object]:
        """Like `asyncio.timeout_at`: the block raises TimeoutError once `when` passes."""
        ...


class LoopClock:
    """The event loop's clock (asyncio's own timers and timeouts: the fast path)."""

    __slots__ = ("_loop", "time")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self.time = self._loop.time

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return self._loop.call_at(when, callback)

    def timeout_at(self, when: float) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout_at(when)


class TimeoutAt:
    """`asyncio.timeout_at` on any Clock: cancels the task at `when`, turns that into
    TimeoutError (the same cancel/uncancel protocol as asyncio's own)."""

    __slots__ = ("_clock", "_fired", "_task", "_timer", "_when")

    def __init__(self, clock: Clock, when: float) -> None:
        self._clock = clock
        self._when = when
        self._fired = False
        self._task: asyncio.Task[object] | None = None
        self._timer: Timer | None = None

    async def __aenter__(self) -> None:
        self._task = asyncio.current_task()
        if self._clock.time() >= self._when:
            self._fire()
        else:
            self._timer = self._clock.call_at(self._when, self._fire)

    def _fire(self) -> None:
        if self._task is not None and not self._task.done():
            self._fired = True
            self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if (
            self._fired
            and self._task is not None
            and self._task.uncancel() == 0
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc
