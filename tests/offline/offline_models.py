"""Models for the offline tests: the same shapes `shoal serve` takes."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

import shoal


class WeightedSum:
    """A batched model: a row is a feature vector; the answer is its weighted sum.
    A row with a negative first feature is refused on its own (the per-row error convention);
    a row whose first feature is 13 makes the whole batch call raise."""

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight
        self.pid = os.getpid()

    @shoal.batch(max_batch_size=64, batch_wait_timeout_s=0.001)
    def __call__(self, rows: list[list[float]]) -> list[Any]:
        if any(row[0] == 13 for row in rows):
            raise RuntimeError("unlucky row in batch")
        return [
            ValueError(f"negative feature {row[0]}") if row[0] < 0 else self.weight * sum(row)
            for row in rows
        ]


class AsyncLength:
    """An async batched model over one text column."""

    @shoal.batch(max_batch_size=16)
    async def __call__(self, texts: list[str]) -> list[int]:
        return [len(t) for t in texts]


class PlainFrame:
    """A plain Ray-style model: a pandas batch in, a pandas batch out."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = batch.copy()
        out["y"] = batch["a"] * 2 + self.offset
        out["pid"] = os.getpid()
        return out


class PlainNumpy:
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"a": batch["a"], "y": batch["a"] + batch["b"]}


class Picky:
    """Batched, vectorised: the whole call raises when any row is negative (as numpy and
    scikit-learn do); records the size of every call."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    @shoal.batch(max_batch_size=64)
    def __call__(self, rows: list[float]) -> list[float]:
        self.calls.append(len(rows))
        if any(r < 0 for r in rows):
            raise ValueError("negative input")
        return [2 * r for r in rows]


class PickyNoRetry:
    """The same, opting out of isolation: a failed batch fails every row."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    @shoal.batch(max_batch_size=64, isolate_failures=False)
    def __call__(self, rows: list[float]) -> list[float]:
        self.calls.append(len(rows))
        if any(r < 0 for r in rows):
            raise ValueError("negative input")
        return [2 * r for r in rows]


class PickyFrame:
    """A plain Ray-style model that raises for the whole batch when any `a` is negative."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        self.calls.append(len(batch))
        if (batch["a"] < 0).any():
            raise ValueError("negative a")
        return batch.assign(y=batch["a"] * 2)
