"""The vectorised adder of Ray Serve's batching tutorial, as a Shoal model.

    shoal serve examples.adder:Adder
    curl -s localhost:8000/v1/models/adder:predict -d '{"instances": [1, 2, 3]}'
    # {"predictions":[2,3,4]}

Each request's numbers are rows; rows from concurrent requests are batched together and added
in one numpy call. A row that is not a number, or whose sum leaves int64 (numpy would wrap
2**63-1 + 1 around to -2**63 without a word), fails only its own request, with a 400.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

import shoal

INT64 = np.iinfo(np.int64)


class Adder:
    def __init__(self, increment: int = 1) -> None:
        self.increment = increment

    @shoal.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def __call__(self, rows: list[Any]) -> list[int | ValueError]:
        # A ValueError in a row's place fails that request alone (400); the others get sums.
        problems = [self._problem(row) for row in rows]
        good = [_whole(row) for row, problem in zip(rows, problems, strict=True) if problem is None]
        sums = iter((np.asarray(good, dtype=np.int64) + self.increment).tolist())
        return [next(sums) if problem is None else problem for problem in problems]

    def _problem(self, row: Any) -> ValueError | None:
        if isinstance(row, bool) or not isinstance(row, numbers.Real):
            return ValueError(f"adder takes numbers, got {row!r}")
        if not math.isfinite(row):
            return ValueError(f"adder takes finite numbers, got {row!r}")
        if not INT64.min <= _whole(row) + self.increment <= INT64.max:
            return ValueError(f"{row!r} + {self.increment} is out of the int64 range")
        return None


def _whole(row: numbers.Real) -> int:
    """An int row as it is (a float would round 2**63 - 1); a float truncated, as numpy does."""
    return int(row) if isinstance(row, numbers.Integral) else math.trunc(float(row))
