"""Offline benchmark: `shoal.batch_predict` against a hand-written `ray.data` pipeline with the
same model, batch size and actor pool, and against a plain single-process loop.

    .venv/bin/python -m bench.batch_predict --rows 1000000 --batch-size 1024

All three read the same generated parquet (64 float32 feature columns, seeded), run the same
seeded torch MLP (64->512->512->10, one torch thread per worker) and write the inputs plus a
prediction column to parquet. Rounds interleave the variants so that machine noise hits all of
them alike; the table reports the best round of each (the least disturbed) and the overhead of
Shoal over the hand-written pipeline.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).resolve().parent / "out"
MODEL = "shoal.runtime.default_model:DefaultMLP"


def make_dataset(rows: int, path: Path) -> Path:
    if path.exists():
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    data = rng.standard_normal((rows, 64), dtype=np.float32)
    table = pa.table({f"f{i}": data[:, i] for i in range(64)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=65536)
    return path


class HandWritten:
    """What a Ray Data user writes by hand: numpy batch in, torch forward, numpy batch out."""

    def __init__(self, hidden: int) -> None:
        import torch

        from shoal.runtime.default_model import DefaultMLP

        torch.set_num_threads(1)
        self.torch = torch
        self.net = DefaultMLP(hidden=hidden).net

    def __call__(self, batch: dict[str, np.ndarray[Any, Any]]) -> dict[str, Any]:
        x = np.stack([batch[f"f{i}"] for i in range(64)], axis=1)
        with self.torch.inference_mode():
            out = self.net(self.torch.from_numpy(x)).numpy()
        return {**batch, "prediction": out}


def run_shoal(src: Path, dst: Path, batch: int, actors: int, hidden: int) -> None:
    from shoal.offline import BatchPredictConfig, batch_predict

    config = BatchPredictConfig(
        target=MODEL,
        config={"hidden": hidden},
        batch_size=batch,
        min_actors=actors,
        max_actors=actors,
    )
    batch_predict(src, config).write_parquet(str(dst))


def run_hand(src: Path, dst: Path, batch: int, actors: int, hidden: int) -> None:
    import ray.data

    ray.data.read_parquet(str(src)).map_batches(
        HandWritten,
        fn_constructor_kwargs={"hidden": hidden},
        batch_size=batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=actors, max_size=actors),
        num_cpus=1,
    ).write_parquet(str(dst))


def run_loop(src: Path, dst: Path, batch: int, actors: int, hidden: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from shoal.runtime.default_model import DefaultMLP

    torch.set_num_threads(1)
    net = DefaultMLP(hidden=hidden).net
    dst.mkdir(parents=True)
    schema = _schema(src)
    with pq.ParquetWriter(dst / "part-0.parquet", schema=schema) as writer:
        for rb in pq.ParquetFile(src).iter_batches(batch_size=batch):
            x = np.stack([rb.column(i).to_numpy() for i in range(64)], axis=1)
            with torch.inference_mode():
                out = net(torch.from_numpy(x)).numpy()
            pred = pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1)), 10)
            writer.write_batch(pa.RecordBatch.from_arrays([*rb.columns, pred], schema=schema))


def _schema(src: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = pq.read_schema(src)
    return base.append(pa.field("prediction", pa.list_(pa.float32(), 10)))


VARIANTS: dict[str, Callable[[Path, Path, int, int, int], None]] = {
    "shoal.batch_predict": run_shoal,
    "hand-written ray.data": run_hand,
    "plain loop (1 process)": run_loop,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    src = make_dataset(args.rows, OUT / f"batch-data-{args.rows}.parquet")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        for _ in range(args.rounds):
            for name, fn in VARIANTS.items():
                dst = Path(tempfile.mkdtemp(prefix="shoal-bench-")) / "out"
                started = time.perf_counter()
                fn(src, dst, args.batch_size, args.actors, args.hidden)
                times[name].append(time.perf_counter() - started)
                shutil.rmtree(dst.parent)
                print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    finally:
        ray.shutdown()
    best = {name: min(ts) for name, ts in times.items()}
    hand = best["hand-written ray.data"]
    result = {
        "rows": args.rows,
        "batch_size": args.batch_size,
        "actors": args.actors,
        "hidden": args.hidden,
        "rounds": args.rounds,
        "seconds": times,
        "rows_per_s": {name: args.rows / t for name, t in best.items()},
        "shoal_overhead_vs_hand_pct": 100 * (best["shoal.batch_predict"] - hand) / hand,
    }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    OUT.mkdir(exist_ok=True)
    (OUT / f"batch-{stamp}.json").write_text(json.dumps(result, indent=2))
    print("\n| variant | best s | rows/s | vs hand-written |\n|---|---|---|---|")
    for name, t in best.items():
        print(f"| {name} | {t:.1f} | {args.rows / t:,.0f} | {hand / t:.2f}x |")
    print(f"\nshoal overhead vs hand-written: {result['shoal_overhead_vs_hand_pct']:+.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
