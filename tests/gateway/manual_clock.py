"""A clock that moves only when a test says so: the gateway's timers (holds, deadlines, idle and
read timeouts) fire exactly when `advance` passes them, with no real waiting."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from shoal.gateway.clock import TimeoutAt


class _Timer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def __call__(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(when, callback)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def timeout_at(self, when: float) -> AbstractAsyncContextManager[object]:
        return TimeoutAt(self, when)

    def timers(self) -> list[float]:
        """When the live timers are due (for tests that wait until one is armed)."""
        return sorted(t.when for _, _, t in self._heap if not t.cancelled)

    def advance(self, seconds: float) -> None:
        """Move time forward, running every timer that comes due, in order."""
        target = self.now + seconds
        while self._heap and self._heap[0][0] <= target:
            when, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self.now = max(self.now, when)
            timer.callback()
        self.now = target
