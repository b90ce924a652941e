"""Request deadlines of one model with ONE loop timer, not one timer per request.

A loop timer per request (arm with `call_at`, cancel when answered) cost about 2 us of a
request's ~12 us in our own code. Here a request is a heap entry and a dict entry; the heap is
ordered by deadline and its head is the only armed timer. Almost every request is answered long
before its deadline, so when one is answered its entry is only forgotten (the dict), and done
entries are popped from the heap's head as they reach it. Deadlines mostly arrive in increasing
order (same default budget, later arrival), so a push rarely moves the head and the timer is
rarely re-armed; when the head's request is answered, the timer is left as is and, when it
fires, finds nothing due and re-arms at the new head.

Keys are sequence numbers, never reused, so a stale heap entry cannot match a later request.
Entries of answered requests behind an unanswered head (one slow request among many fast ones)
are compacted away once they outnumber the waiting ones, so the heap stays bounded.
Everything runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from shoal.runtime.clock import Clock, TimerHandle
from shoal.runtime.errors import DeadlineExceeded

Futures = Sequence[asyncio.Future[Any]]


class Deadlines:
    COMPACT_MIN = 1024

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int]] = []
        self._waiting: dict[int, tuple[Futures, float]] = {}
        """key -> (the request's futures, its budget in seconds, for the error message)"""
        self._seq = itertools.count()
        self._timer: TimerHandle | None = None
        self._timer_at = 0.0

    def add(self, deadline: float, futures: Futures) -> int:
        """Fail `futures` with DeadlineExceeded at `deadline` unless `remove`d first."""
        key = next(self._seq)
        self._waiting[key] = (futures, deadline - self._clock.time())
        heapq.heappush(self._heap, (deadline, key))
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline)
        return key

    def remove(self, key: int) -> None:
        """The request is answered (or failed): forget it."""
        del self._waiting[key]
        heap = self._heap
        waiting = self._waiting
        while heap and heap[0][1] not in waiting:
            heapq.heappop(heap)
        if len(heap) > self.COMPACT_MIN and len(heap) > 2 * len(waiting):
            self._heap = heap = [item for item in heap if item[1] in waiting]
            heapq.heapify(heap)
        if not heap and self._timer is not None:
            self._timer.cancel()  # nothing waits: leave no timer behind
            self._timer = None

    def __len__(self) -> int:
        """Heap entries, answered ones included (bounded: see the module doc)."""
        return len(self._heap)

    def waiting(self) -> Iterator[Futures]:
        for futures, _ in list(self._waiting.values()):
            yield futures

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._clock.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        # The loop ran this timer because `_timer_at` is due (its clock may say a hair less).
        now = max(self._clock.time(), self._timer_at)
        heap = self._heap
        while heap and (heap[0][0] <= now or heap[0][1] not in self._waiting):
            _, key = heapq.heappop(heap)
            entry = self._waiting.get(key)
            if entry is not None:
                _expire(*entry)  # stays in _waiting until its request's `remove`
        if heap:
            self._arm(heap[0][0])


def _expire(futures: Futures, seconds: float) -> None:
    err = DeadlineExceeded(f"deadline exceeded: no answer within {seconds * 1000:.0f} ms")
    for fut in futures:
        if not fut.done():
            fut.set_exception(err)
