"""The callable class that Ray Data's actor pool runs: one user model per actor.

Two model shapes are supported, the same ones `shoal serve` takes:
- a `@shoal.batch` method or function: called directly with the rows of a Ray batch as a list
  (Ray has already formed the batch, so the serving queue is bypassed), one result per row;
- a plain `__call__(batch)` over a pandas DataFrame or a dict of numpy arrays, Ray Data style.

A row whose model call fails gets its message in the error column instead of a prediction;
with `fail_fast` the first failure stops the run. Nothing is dropped silently. A batch whose
call raises is bisected to find the rows at fault: the same rule and code as `shoal serve`
(shoal/runtime/isolation.py), and the same opt-out (`@shoal.batch(isolate_failures=False)`:
every row of the batch gets the batch's error).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import pyarrow as pa

from shoal.offline.columns import RowFormat, error_array, prediction_array, rows_from_table
from shoal.runtime import isolation
from shoal.runtime.batching import BatchedFunction
from shoal.runtime.execution import call_sync
from shoal.runtime.loading import ModelSpec, instantiate

logger = logging.getLogger(__name__)

BatchFormat = Literal["pandas", "numpy"]


class RowError(Exception):
    """A model call failed for some rows and the run was asked to fail fast."""


@dataclass(frozen=True)
class PredictorOptions:
    """How rows become model inputs and results become columns. Picklable: sent to actors."""

    input_columns: tuple[str, ...] | None = None
    """Columns fed to the model (default: every column)."""
    row_format: RowFormat = "auto"
    """`value`: the one input column's value; `list`: the input columns' values in order (a
    feature vector, like a V1 instance); `dict`: column -> value; `auto`: value for one input
    column, else list."""
    batch_format: BatchFormat = "pandas"
    """What a plain `__call__(batch)` receives."""
    prediction_column: str = "prediction"
    error_column: str = "error"
    fail_fast: bool = False
    device: str = "auto"


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Predictor:
    """Constructed once per actor (loads the model), then called once per batch."""

    def __init__(self, spec: ModelSpec, options: PredictorOptions) -> None:
        self.options = options
        self.model, self.device = instantiate(spec, options.device)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batched, self._fn = _entry(self.model)
        logger.info("loaded %s on %s", spec.target, self.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self._batched is not None:
            return self._predict_rows(batch, self._batched)
        return self._predict_frame(batch)

    # -- @shoal.batch models: a list of rows in, a list of results out ----------------------

    def _call_batched(self, fn: BatchedFunction, rows: list[Any]) -> Any:
        call: Callable[[list[Any]], Any]
        call = fn.func if self._fn is None else self._fn
        if fn.is_async:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            return self._loop.run_until_complete(call(rows))
        return call_sync(call, rows)

    def _predict_rows(self, table: pa.Table, fn: BatchedFunction) -> pa.Table:
        columns = list(self.options.input_columns or table.column_names)
        rows = rows_from_table(table, columns, self.options.row_format)
        name = fn.func.__qualname__

        def call(batch: list[Any]) -> Any:
            return self._call_batched(fn, batch)

        try:
            results = isolation.checked(call(rows), len(rows), name)
        except Exception as exc:
            if self.options.fail_fast:
                raise RowError(f"model failed on a batch of {len(rows)} rows: {exc}") from exc
            if fn.policy.isolate_failures:
                results = isolation.run_sync(call, rows, exc, name).results
            else:
                results = [exc] * len(rows)
        failed = [isinstance(r, BaseException) for r in results]
        errors: list[str | None] = [None] * len(results)
        for i, result in enumerate(results):
            if isinstance(result, BaseException):
                if self.options.fail_fast:
                    raise RowError(f"model failed on a row: {_error_text(result)}") from result
                errors[i] = _error_text(result)
        return table.append_column(
            self.options.prediction_column, prediction_array(results, failed)
        ).append_column(self.options.error_column, error_array(errors))

    # -- plain models: Ray Data's batch in, a batch out -------------------------------------

    def _call_plain(self, frame: pd.DataFrame) -> pa.Table:
        assert self._fn is not None
        arg: Any = frame
        if self.options.batch_format == "numpy":
            arg = {c: frame[c].to_numpy() for c in frame.columns}
        result = self._fn(arg)
        if inspect.isawaitable(result):
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            result = self._loop.run_until_complete(result)
        out = result if isinstance(result, pd.DataFrame) else pd.DataFrame(result)
        if len(out) != len(frame):
            raise ValueError(f"the model returned {len(out)} rows for {len(frame)}")
        table = pa.Table.from_pandas(out.reset_index(drop=True), preserve_index=False)
        return table.append_column(self.options.error_column, error_array([None] * len(table)))

    def _predict_frame(self, batch: pa.Table) -> pa.Table:
        frame = batch.to_pandas()
        try:
            return call_sync(self._call_plain, frame)
        except Exception as exc:
            if self.options.fail_fast:
                raise RowError(f"model failed on a batch of {len(frame)} rows: {exc}") from exc
            error = exc

        def call(positions: list[int]) -> list[pa.Table]:
            part = frame.iloc[positions[0] : positions[-1] + 1].reset_index(drop=True)
            out = call_sync(self._call_plain, part)
            return [out.slice(i, 1) for i in range(out.num_rows)]

        found = isolation.run_sync(call, list(range(len(frame))), error, type(self.model).__name__)
        parts = []
        for i, part in enumerate(found.results):
            if isinstance(part, BaseException):
                bad = pa.Table.from_pandas(frame.iloc[i : i + 1], preserve_index=False)
                part = bad.append_column(
                    self.options.error_column, error_array([_error_text(part)])
                )
            parts.append(part)
        return pa.concat_tables(parts, promote_options="permissive")


def _entry(model: Any) -> tuple[BatchedFunction | None, Callable[..., Any] | None]:
    """(batched function, bound callable to call it with) for a model object or function."""
    if isinstance(model, BatchedFunction):
        return model, None
    attr = inspect.getattr_static(type(model), "__call__", None)
    if isinstance(attr, BatchedFunction):
        bound = attr.func.__get__(model, type(model))
        return attr, bound
    if callable(model):
        return None, model
    raise TypeError(f"{model!r} is not callable: give it a __call__ (optionally @shoal.batch)")
