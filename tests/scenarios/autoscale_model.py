"""A model for the autoscaling scenarios: a fixed time per batch (so a queue builds at a load
this 2-core machine can produce) and a fixed load time (so "from zero" has a known cost)."""

from __future__ import annotations

import asyncio
import time

import shoal


class Slow:
    def __init__(self, batch_seconds: float = 0.1, load_seconds: float = 0.0) -> None:
        self.batch_seconds = batch_seconds
        time.sleep(load_seconds)  # the model's own load time, before readiness

    @shoal.batch(max_batch_size=4, batch_wait_timeout_s=0.001)
    async def __call__(self, xs: list[int]) -> list[int]:
        await asyncio.sleep(self.batch_seconds)
        return [x + 1 for x in xs]
