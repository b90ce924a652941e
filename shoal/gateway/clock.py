"""The gateway's time: what the request path reads (`time`), the timers it arms (`call_at`) and
the deadlines it waits under (`timeout_at`). Production uses the event loop's own, with every
request's deadline on one shared timer (`SharedTimers`); tests inject a manual clock and advance
it, so deadlines, holds and idle timers are exercised exactly, without waiting."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol

log = logging.getLogger(__name__)


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


class Timers(Protocol):
    """What a deadline needs of a clock: its time and a one-shot timer."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer: ...


class LoopClock:
    """The event loop's clock. Request deadlines share one loop timer (`SharedTimers`):
    uvloop's `call_at` plus `cancel` cost ~3 us, and `asyncio.timeout_at` ~5 us, a request."""

    __slots__ = ("_deadlines", "_loop", "time")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self.time = self._loop.time
        self._deadlines = SharedTimers(self)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return self._loop.call_at(when, callback)

    def timeout_at(self, when: float) -> AbstractAsyncContextManager[object]:
        return TimeoutAt(self._deadlines, when)


class SharedTimers:
    """Many one-shot timers through ONE timer of the underlying clock, for deadlines that are
    almost always cancelled long before they are due (a request answered in milliseconds
    under a budget of seconds).

    An entry is a heap item and a dict item; only the heap's head is armed below. Cancelling
    forgets the dict item and pops cancelled items off the head; the armed timer stays, and
    when it fires with nothing due it re-arms at the new head. Deadlines mostly come in
    increasing order (one budget, later arrivals), so a new entry rarely becomes the head and
    the underlying timer is rarely touched. Cancelled items behind a live head (one slow
    request among many fast ones) are compacted away once they outnumber the live ones."""

    __slots__ = ("_armed", "_armed_at", "_clock", "_heap", "_live", "_seq", "time")

    COMPACT_MIN = 1024

    def __init__(self, clock: Timers) -> None:
        self._clock = clock
        self.time = clock.time
        self._heap: list[tuple[float, int]] = []
        self._live: dict[int, Callable[[], None]] = {}
        self._seq = itertools.count()  # keys are never reused: a stale item matches nothing
        self._armed: Timer | None = None
        self._armed_at = math.inf

    def __len__(self) -> int:
        """Items in the heap, cancelled ones included (bounded: see the class doc)."""
        return len(self._heap)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        key = next(self._seq)
        self._live[key] = callback
        heapq.heappush(self._heap, (when, key))
        if when < self._armed_at:
            if self._armed is not None:
                self._armed.cancel()
            self._armed_at = when
            self._armed = self._clock.call_at(when, self._fire)
        return _Entry(self, key)

    def _cancel(self, key: int) -> None:
        live = self._live
        if live.pop(key, None) is None:
            return
        heap = self._heap
        while heap and heap[0][1] not in live:
            heapq.heappop(heap)
        if len(heap) > self.COMPACT_MIN and len(heap) > 2 * len(live):
            self._heap = [item for item in heap if item[1] in live]
            heapq.heapify(self._heap)

    def _fire(self) -> None:
        # The timer ran because `_armed_at` is due, whatever a hair less the clock may say.
        now = max(self._clock.time(), self._armed_at)
        self._armed, self._armed_at = None, math.inf
        heap, live = self._heap, self._live
        due = []
        while heap and (heap[0][0] <= now or heap[0][1] not in live):
            _, key = heapq.heappop(heap)
            callback = live.pop(key, None)
            if callback is not None:
                due.append(callback)
        if heap:
            self._armed_at = heap[0][0]
            self._armed = self._clock.call_at(self._armed_at, self._fire)
        for callback in due:
            try:
                callback()
            except Exception:  # one bad callback must not cost the others their deadlines
                log.exception("deadline callback failed")


class _Entry:
    __slots__ = ("_key", "_timers")

    def __init__(self, timers: SharedTimers, key: int) -> None:
        self._timers = timers
        self._key = key

    def cancel(self) -> None:
        self._timers._cancel(self._key)


class TimeoutAt:
    """`asyncio.timeout_at` on any clock: cancels the task at `when`, turns that into
    TimeoutError (the same cancel/uncancel protocol as asyncio's own)."""

    __slots__ = ("_clock", "_fired", "_task", "_timer", "_when")

    def __init__(self, clock: Timers, when: float) -> None:
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
