"""The benchmark's model, shared by every server under test (torch and numpy only, no serving
framework), so that each peer runs the very same computation and counts its batches the same way.

`MLPCore.predict_rows` is what every peer calls: a list of rows in, a list of rows out. Each call
bumps two int64 counters (calls, rows) in a small memory-mapped file whose path the harness
passes in; the harness reads them before and after a measurement, so the mean batch size is
measured identically for Shoal, Ray Serve, KServe and the floor server, whatever their own
metrics say.
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

IN_FEATURES = 64
OUT_FEATURES = 10
_COUNTERS = struct.Struct("<qq")  # calls, rows


@dataclass(frozen=True)
class ModelConfig:
    """What defines the model: every peer is built from the same values."""

    hidden: int = 512
    seed: int = 0
    torch_threads: int = 1


def build_mlp(hidden: int, seed: int) -> Any:
    """MLP 64 -> hidden -> hidden -> 10 with weights drawn from a seeded generator."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    layers: list[torch.nn.Module] = []
    sizes = [IN_FEATURES, hidden, hidden, OUT_FEATURES]
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        lin = torch.nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            bound = 1.0 / fan_in**0.5
            lin.weight.uniform_(-bound, bound, generator=gen)
            lin.bias.uniform_(-bound, bound, generator=gen)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


def sample_row(seed: int = 1) -> list[float]:
    """The one input row every request carries (fixed, so bodies are byte-identical)."""
    rng = np.random.default_rng(seed)
    return [round(float(x), 6) for x in rng.standard_normal(IN_FEATURES)]


class BatchCounter:
    """Two int64 counters in a shared file: written by the model thread, read by the harness."""

    def __init__(self, path: str | None) -> None:
        self._mm: mmap.mmap | None = None
        if path:
            fd = os.open(path, os.O_RDWR)
            try:
                self._mm = mmap.mmap(fd, _COUNTERS.size)
            finally:
                os.close(fd)

    def record(self, rows: int) -> None:
        if self._mm is None:
            return
        calls, total = _COUNTERS.unpack_from(self._mm, 0)
        _COUNTERS.pack_into(self._mm, 0, calls + 1, total + rows)


def create_counter_file(path: str) -> None:
    with open(path, "wb") as f:
        f.write(_COUNTERS.pack(0, 0))


def read_counter_file(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        calls, rows = _COUNTERS.unpack(f.read(_COUNTERS.size))
    return int(calls), int(rows)


class MLPCore:
    """The model plus its batch counter. Not thread-safe: every peer calls it from one thread."""

    def __init__(self, config: ModelConfig, stats_path: str | None = None) -> None:
        import torch

        torch.set_num_threads(config.torch_threads)
        self._torch = torch
        self.config = config
        self.model = build_mlp(config.hidden, config.seed)
        self.counter = BatchCounter(stats_path)
        self._pinned_threads: set[int] = set()

    def _pin_threads(self) -> None:
        # torch.set_num_threads sets OpenMP's per-thread default: a worker thread that did not
        # call it runs the model with one OpenMP thread per core, whose spinning costs several
        # times the CPU of the model on a busy machine (measured: 0.35 -> 3-4 ms CPU per
        # W1 batch). Every server runs the model in a different thread, so pin each one.
        tid = threading.get_ident()
        if tid not in self._pinned_threads:
            self._torch.set_num_threads(self.config.torch_threads)
            self._pinned_threads.add(tid)

    def predict_array(self, batch: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        self._pin_threads()
        torch = self._torch
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        self.counter.record(int(batch.shape[0]))
        result: np.ndarray[Any, Any] = out.numpy()
        return result

    def predict_rows(self, rows: Sequence[Any] | np.ndarray[Any, Any]) -> list[list[float]]:
        batch = np.asarray(rows, dtype=np.float32).reshape(len(rows), IN_FEATURES)
        out: list[list[float]] = self.predict_array(batch).tolist()
        return out
