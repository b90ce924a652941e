"""`shoal batch-predict`: the serving model class over a dataset file, written to parquet.

Local Ray is started (and stopped) by the command unless RAY_ADDRESS names a cluster; see
docs/batch-predict.md for clusters with token auth and the ports a local Ray opens.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from shoal.offline.columns import RowFormat
from shoal.offline.pipeline import (
    BatchPredictConfig,
    InputError,
    batch_predict,
    check_target,
    input_format,
)
from shoal.offline.predictor import BatchFormat, PredictorOptions, RowError
from shoal.runtime.loading import (
    MLFLOW_TARGET,
    LoadError,
    is_mlflow_uri,
    parse_config_json,
    parse_config_pairs,
)

logger = logging.getLogger(__name__)


EPILOG = """\
output: a parquet folder with the input columns, then `prediction` (null for failed rows) and
`error` (null, or "ExceptionType: message" for a row the model failed on; the exit code is 3
when any row failed). A dict result becomes a struct column, equal-length numeric arrays a
fixed-size list column. A batch whose call raises is bisected to find the rows at fault, as
`shoal serve` does; --fail-fast stops at the first failure instead.

cluster: RAY_ADDRESS=ray://head:10001 (or an address Ray accepts) runs on that cluster; with
Ray's token auth set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH). Without
RAY_ADDRESS a local Ray is started on this machine and stopped at the end.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "target",
        nargs="?",
        default=None,
        help="module:Class or path/to/file.py:Class (optional with an MLflow --model-uri: the "
        "registered pyfunc itself is run)",
    )
    parser.add_argument("--input", required=True, help="a .csv, .parquet or .jsonl file or folder")
    parser.add_argument("--output", required=True, help="a parquet folder to write")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--min-actors", type=int, default=1)
    parser.add_argument("--max-actors", type=int, default=1)
    parser.add_argument("--num-gpus-per-actor", type=float, default=0.0)
    parser.add_argument("--num-cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--config-json", default=None, help="model kwargs as a JSON object")
    parser.add_argument("--model-uri", default=None)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--input-columns", default=None, help="comma-separated; default: all")
    parser.add_argument(
        "--row-format",
        choices=get_args(RowFormat),
        default="auto",
        help="what one row is for a @shoal.batch model: `value` (the one input column's "
        "value), `list` (the input columns' values in order, like a V1 instance), `dict` "
        "(column -> value, like a V1 instance for a model with named inputs); `auto` (default): "
        "`value` for one input column, else `list`. Online clients that send objects need "
        "`dict` here to give the model the same rows",
    )
    parser.add_argument(
        "--batch-format",
        choices=get_args(BatchFormat),
        default="pandas",
        help="what a plain __call__(batch) (no @shoal.batch) receives: a pandas DataFrame "
        "(default) or a dict of numpy arrays, as Ray Data's map_batches gives them",
    )
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failed row")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


@dataclass(frozen=True)
class Summary:
    rows: int
    failed: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"{self.rows} rows, {self.failed} failed, {self.seconds:.1f} s, "
            f"{self.rows_per_s:,.0f} rows/s"
        )


def config_from_args(args: argparse.Namespace) -> BatchPredictConfig:
    kwargs: dict[str, Any] = {}
    if args.config_json:
        kwargs.update(parse_config_json(args.config_json, "--config-json"))
    kwargs.update(parse_config_pairs(args.config))
    columns = (
        tuple(c.strip() for c in args.input_columns.split(",")) if args.input_columns else None
    )
    target = args.target
    if target is None:
        if not is_mlflow_uri(args.model_uri):
            raise ValueError("give a model class (module:Class) or an MLflow --model-uri")
        target = MLFLOW_TARGET
    return BatchPredictConfig(
        target=target,
        config=kwargs,
        model_uri=args.model_uri,
        batch_size=args.batch_size,
        min_actors=args.min_actors,
        max_actors=args.max_actors,
        num_gpus_per_actor=args.num_gpus_per_actor,
        num_cpus_per_actor=args.num_cpus_per_actor,
        options=PredictorOptions(
            input_columns=columns,
            row_format=args.row_format,
            batch_format=args.batch_format,
            fail_fast=args.fail_fast,
            device=args.device,
        ),
    )


def count_output(path: Path, error_column: str) -> tuple[int, int]:
    """(rows, failed rows) from the written parquet, reading only the error column."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=[error_column])
    errors = table.column(error_column)
    return table.num_rows, table.num_rows - int(pc.sum(pc.is_null(errors)).as_py() or 0)


def run_pipeline(config: BatchPredictConfig, source: str, output: Path) -> Summary:
    import ray

    started = time.perf_counter()
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(
            address=os.environ.get("RAY_ADDRESS") or None,
            include_dashboard=False,
            logging_level=logging.WARNING,
            configure_logging=True,
        )
    try:
        batch_predict(source, config).write_parquet(str(output))
    finally:
        if own_ray:
            ray.shutdown()
    rows, failed = count_output(output, config.options.error_column)
    return Summary(rows=rows, failed=failed, seconds=time.perf_counter() - started)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    output = Path(args.output)
    try:
        config = config_from_args(args)
        if output.exists() and not args.overwrite:
            raise InputError(f"output {output} exists; pass --overwrite to replace it")
        input_format(args.input)
        check_target(config.target)
    except (LoadError, InputError, ValueError) as exc:
        print(f"shoal batch-predict: {exc}", file=sys.stderr)
        return 2
    if output.exists():
        import shutil

        shutil.rmtree(output) if output.is_dir() else output.unlink()
    try:
        summary = run_pipeline(config, args.input, output)
    except Exception as exc:
        cause = _root_cause(exc)
        print(f"shoal batch-predict: failed: {cause}", file=sys.stderr)
        return 1
    print(f"shoal batch-predict: {summary.line()} -> {output}", file=sys.stderr)
    print(
        json.dumps(
            {
                "rows": summary.rows,
                "failed": summary.failed,
                "seconds": round(summary.seconds, 3),
                "rows_per_s": round(summary.rows_per_s, 1),
                "output": str(output),
            }
        )
    )
    return 0 if summary.failed == 0 else 3


def _root_cause(exc: BaseException) -> str:
    """Ray wraps actor errors in layers; the user wants the model's own message."""
    seen: BaseException = exc
    while True:
        nxt = getattr(seen, "cause", None) or seen.__cause__
        if not isinstance(nxt, BaseException) or nxt is seen:
            break
        seen = nxt
    if isinstance(seen, RowError | LoadError):
        return str(seen)
    text = str(exc).strip().splitlines()
    interesting = [ln for ln in text if "RowError" in ln or "LoadError" in ln]
    return interesting[-1].strip() if interesting else (text[-1] if text else repr(exc))
