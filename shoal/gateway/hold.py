"""Holding requests for a model that has no ready replica (scale from zero, rolling updates).

A held request waits until the model's replica set changes, its deadline passes, or its client
goes away. The queue is bounded: past the bound the caller answers 503 + Retry-After at once.
The number held is the autoscaler's scale-from-zero signal (GATEWAY_HELD_REQUESTS)."""

from __future__ import annotations

import asyncio
from collections import deque


class HoldFull(Exception):
    """The model already holds as many requests as allowed."""


class HoldQueue:
    __slots__ = ("_waiters", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._waiters)

    async def wait(self, timeout_s: float) -> bool:
        """Wait for the next `release()`. True when released, False when `timeout_s` ran out.
        Raises HoldFull when the queue is at its bound (checked before waiting)."""
        if len(self._waiters) >= self.limit:
            raise HoldFull
        if timeout_s <= 0:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except TimeoutError:
            return False
        finally:
            # Released futures are gone already; a timed-out or cancelled one is still queued.
            if not fut.done():
                fut.cancel()
                self._waiters.remove(fut)
        return True

    def release_one(self) -> bool:
        """Wake the oldest held request (a replica finished one: there may be room now)."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return True
        return False

    def release(self) -> int:
        """Wake every held request, oldest first (they run in that order); returns how many."""
        n = 0
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n += 1
        return n
