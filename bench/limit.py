"""The model-bound limit: the model called in-process, back to back, on full batches of
`max_batch_size` rows, in one thread with the same torch thread count as every server. No server
can beat it; W2 is reported as a share of it. Also prints the expected answer for the sample row,
which the harness uses to check every server's answers before loading it.

`python -m bench.limit --hidden 2048 --batch 32 --duration 5` prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bench.mlp import MLPCore, ModelConfig, sample_row


def measure(config: ModelConfig, batch: int, duration_s: float) -> dict[str, object]:
    core = MLPCore(config)
    rows = np.asarray([sample_row()] * batch, dtype=np.float32)
    expected = core.predict_rows([sample_row()])[0]
    warm_until = time.perf_counter() + min(1.0, duration_s / 4)
    while time.perf_counter() < warm_until:
        core.predict_rows(rows)
    calls = 0
    start = time.perf_counter()
    cpu_start = time.thread_time()
    stop_at = start + duration_s
    while time.perf_counter() < stop_at:
        # predict_rows, not the bare model: a server pays the list->tensor->list conversion too.
        core.predict_rows(rows)
        calls += 1
    elapsed = time.perf_counter() - start
    cpu = time.thread_time() - cpu_start
    one = [sample_row()]
    t0 = time.perf_counter()
    for _ in range(20):
        core.predict_rows(one)
    single_ms = (time.perf_counter() - t0) / 20 * 1e3
    return {
        "rows_per_s": calls * batch / elapsed,
        "batch": batch,
        "call_ms": elapsed / calls * 1e3,
        # CPU, not wall: what a row costs the model at full batches, whatever else runs.
        "cpu_ms_per_row": cpu / (calls * batch) * 1e3,
        "single_row_call_ms": single_ms,
        "expected": expected,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--duration", type=float, default=5.0)
    a = p.parse_args()
    config = ModelConfig(hidden=a.hidden, torch_threads=a.torch_threads)
    print(json.dumps(measure(config, a.batch, a.duration)))


if __name__ == "__main__":
    main()
