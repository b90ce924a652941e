"""The benchmark model as a Shoal model class:

    shoal serve mlp=bench.models:MLP --config hidden=2048 --config torch_threads=1

Same `MLPCore` as every peer (bench/mlp.py). The batch counter's file comes from `stats` or the
SHOAL_BENCH_STATS env var (the harness sets it). The decorator's knobs are the bench defaults;
the harness passes them again as `--max-batch-size`/`--batch-wait-timeout-s` overrides.
"""

from __future__ import annotations

import os
from typing import Any

import shoal
from bench.mlp import MLPCore, ModelConfig


class MLP:
    def __init__(
        self, hidden: int = 512, seed: int = 0, torch_threads: int = 1, stats: str | None = None
    ) -> None:
        config = ModelConfig(hidden=hidden, seed=seed, torch_threads=torch_threads)
        self.core = MLPCore(config, stats or os.environ.get("SHOAL_BENCH_STATS") or None)

    # A plain def: Shoal runs it in the batcher's worker thread, off the event loop.
    @shoal.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    def __call__(self, rows: list[Any]) -> list[list[float]]:
        return self.core.predict_rows(rows)
