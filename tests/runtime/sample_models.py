"""Models the runtime tests serve with `shoal serve tests/runtime/sample_models.py:Class`."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine
from typing import Any

import numpy as np

import shoal


class Echo:
    """Batched, async: answers each row with itself."""

    @shoal.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def __call__(self, rows: list[Any]) -> list[Any]:
        return rows


class Declared:
    """Declares its V2 inputs, so the server checks names, datatypes and shapes."""

    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    outputs = [{"name": "sum", "datatype": "FP32", "shape": [-1]}]

    @shoal.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    def __call__(self, rows: list[Any]) -> list[Any]:
        return [float(sum(r)) for r in rows]


def wait_for_gate(gate_dir: str, token: str, timeout_s: float = 60.0) -> None:
    """Block until the gate file exists; a gate that never opens is a failure, not a pass."""
    path = os.path.join(gate_dir, token)
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"gate {token!r} did not open within {timeout_s:.0f} s")
        time.sleep(0.005)


class Gated:
    """Unbatched, sync: a row names a gate; the call blocks until that gate file exists.

    Lets tests hold a request inside the model for exactly as long as they need."""

    def __init__(self, gate_dir: str) -> None:
        self.gate_dir = gate_dir

    def __call__(self, token: str) -> str:
        wait_for_gate(self.gate_dir, token)
        return f"passed {token}"


class Broken:
    """Returns one result too few: every request of the batch gets a 500 that says so."""

    @shoal.batch(max_batch_size=4, batch_wait_timeout_s=0.001)
    async def __call__(self, rows: list[Any]) -> list[Any]:
        return rows[:-1]


class WaitsToLoad:
    """Loads only once a file exists: the server must answer live=200, ready=503 meanwhile."""

    def __init__(self, gate: str) -> None:
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)

    async def __call__(self, row: Any) -> Any:
        return row


class FailsToLoad:
    def __init__(self) -> None:
        raise RuntimeError("weights file /models/missing.pt not found")

    def __call__(self, row: Any) -> Any:
        return row


class SlowBatched:
    """Batched, sync, 20 ms per batch: keeps a queue under load for drain tests."""

    @shoal.batch(max_batch_size=4, batch_wait_timeout_s=0.001)
    def __call__(self, rows: list[int]) -> list[int]:
        time.sleep(0.02)
        return [r + 1 for r in rows]


class GatedBatched:
    """Batched one row at a time, sync: a row names a gate and waits for it; rows it computed
    are appended to `seen` in the gate dir (so tests can tell a row was never computed)."""

    def __init__(self, gate_dir: str) -> None:
        self.gate_dir = gate_dir

    @shoal.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    def __call__(self, tokens: list[str]) -> list[str]:
        (token,) = tokens
        with open(os.path.join(self.gate_dir, "seen"), "a") as f:
            f.write(token + "\n")
        wait_for_gate(self.gate_dir, token)
        return [f"passed {token}"]


class HelperBatched:
    """Ray Serve's tutorial shape: `__call__` awaits a batched helper method."""

    @shoal.batch(max_batch_size=8, batch_wait_timeout_s=0.5)
    async def handle_batch(self, rows: list[int]) -> list[int]:
        return [r * 2 for r in rows]

    async def __call__(self, row: int) -> int:
        answer: int = await self.handle_batch(row)
        return answer


class SyncCallsHelper:
    """A plain-def `__call__` over a batched helper: it could only return a coroutine."""

    @shoal.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def handle_batch(self, rows: list[int]) -> list[int]:
        return rows

    def __call__(self, row: int) -> Any:
        return self.handle_batch(row)


class ReturnsCoroutine:
    """A plain-def `__call__` that returns a coroutine (a forgotten `async`)."""

    def __call__(self, row: int) -> Coroutine[Any, Any, int]:
        async def later() -> int:
            await asyncio.sleep(0)
            return row

        return later()


class HeldModules:
    """Torch modules inside a dict and a list: each must be in eval mode when served."""

    def __init__(self) -> None:
        import torch

        self.heads: dict[str, Any] = {"a": torch.nn.Dropout(0.5), "b": [torch.nn.Dropout(0.5)]}
        self.layers: list[Any] = [torch.nn.Linear(2, 2), (torch.nn.Dropout(0.5),)]

    def _modules(self) -> list[Any]:
        return [self.heads["a"], self.heads["b"][0], self.layers[0], self.layers[1][0]]

    def __call__(self, row: Any) -> list[bool]:
        return [m.training for m in self._modules()]


class VectorAdder:
    """Ray Serve tutorial's adder as written there: one numpy call for the batch, no checks of
    its own, so one bad row makes the whole call raise (the runtime must find it)."""

    @shoal.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def __call__(self, numbers: list[Any]) -> list[Any]:
        result: list[Any] = (np.asarray(numbers) + 1).tolist()
        return result


class TorchDoubler:
    """Batched, answering each row with a torch tensor (as a torch model's forward does)."""

    @shoal.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    def __call__(self, rows: list[Any]) -> list[Any]:
        import torch

        return list(torch.as_tensor(np.stack(rows)) * 2)
