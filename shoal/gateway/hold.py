"""Holding requests for a model that has no ready replica (scale from zero, rolling updates).

A held request waits until the model's replica set changes, its deadline passes, or its client
goes away. The queue is bounded: past the bound the caller answers 503 + Retry-After at once.
The number held is the autoscaler's scale-from-zero signal (GATEWAY_HELD_REQUESTS). Deadlines
run on the injected Clock (tests advance a manual one)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from shoal.gateway.clock import Clock


class HoldFull(Exception):
    """The model already holds as many requests as allowed."""


class HoldQueue:
    __slots__ = ("_clock", "_waiters", "limit")

    def __init__(self, limit: int, clock: Clock) -> None:
        self.limit = limit
        self._clock = clock
        self._waiters: deque[asyncio.Future[bool]] = deque()

    def __len__(self) -> int:
        return len(self._waiters)

    async def wait(self, timeout_s: float) -> bool:
        """Wait for the next `release()`. True when released, False when `timeout_s` ran out.
        Raises HoldFull when the queue is at its bound (checked before waiting)."""
        if len(self._waiters) >= self.limit:
            raise HoldFull
        if timeout_s <= 0:
            return False
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        timer = self._clock.call_at(self._clock.time() + timeout_s, lambda: _expire(fut))
        released = False
        try:
            released = await fut
        finally:
            timer.cancel()
            if not released:
                # Released futures were popped by release(); a timed-out or cancelled one is
                # still queued.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
        return released

    def release_one(self) -> bool:
        """Wake the oldest held request (a replica finished one: there may be room now)."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(True)
                return True
        return False

    def release(self) -> int:
        """Wake every held request, oldest first (they run in that order); returns how many."""
        n = 0
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(True)
                n += 1
        return n


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)
