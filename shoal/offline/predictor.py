"""The callable class that Ray Data's actor pool runs: one user model per actor.

Two model shapes are supported, the same ones `shoal serve` takes:
- a `@shoal.batch` method or function: called directly with the rows of a Ray batch as a list
  (Ray has already formed the batch, so the serving queue is bypassed), one result per row;
- a plain `__call__(batch)` over a pandas DataFrame or a dict of numpy arrays, Ray Data style.

A row whose model call fails gets its message in the error column instead of a prediction;
with `fail_fast` the first failure stops the run. Nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from shoal.runtime.batching import BatchedFunction
from shoal.runtime.execution import call_sync
from shoal.runtime.loading import ModelSpec, instantiate

logger = logging.getLogger(__name__)

RowFormat = Literal["auto", "value", "list", "dict"]
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
    extra: dict[str, Any] = field(default_factory=dict)


def _native(value: Any) -> Any:
    """numpy scalars and arrays from a DataFrame become what a JSON request would carry."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


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

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if self._batched is not None:
            return self._predict_rows(batch, self._batched)
        return self._predict_frame(batch)

    # -- @shoal.batch models: a list of rows in, a list of results out ----------------------

    def _rows(self, frame: pd.DataFrame) -> list[Any]:
        cols = list(self.options.input_columns or frame.columns)
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise KeyError(
                f"input columns {missing} not in the dataset (has {list(frame.columns)})"
            )
        fmt = self.options.row_format
        if fmt == "auto":
            fmt = "value" if len(cols) == 1 else "list"
        if fmt == "value":
            if len(cols) != 1:
                raise ValueError(f"row format 'value' needs one input column, got {cols}")
            values: list[Any] = frame[cols[0]].tolist()
            return values
        if fmt == "dict":
            records = frame[cols].to_dict("records")
            return [{k: _native(v) for k, v in r.items()} for r in records]
        # A feature vector per row: numeric columns become one 2-D array whose rows are views,
        # so a million rows cost no Python-level conversion (what a V2 tensor row also is).
        block = frame[cols]
        if all(pd.api.types.is_numeric_dtype(t) for t in block.dtypes):
            return list(block.to_numpy())
        return [list(r) for r in block.itertuples(index=False, name=None)]

    def _call_batched(self, fn: BatchedFunction, rows: list[Any]) -> list[Any]:
        call: Callable[[list[Any]], Any]
        call = fn.func if self._fn is None else self._fn
        if fn.is_async:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            results = self._loop.run_until_complete(call(rows))
        else:
            results = call_sync(call, rows)
        results = list(results)
        if len(results) != len(rows):
            raise ValueError(f"the model returned {len(results)} results for {len(rows)} inputs")
        return results

    def _predict_rows(self, frame: pd.DataFrame, fn: BatchedFunction) -> pd.DataFrame:
        rows = self._rows(frame)
        try:
            results = self._call_batched(fn, rows)
        except Exception as exc:
            if self.options.fail_fast:
                raise RowError(f"model failed on a batch of {len(rows)} rows: {exc}") from exc
            # Isolate the bad rows: one call per row, so only they are marked failed.
            results = []
            for row in rows:
                try:
                    results.extend(self._call_batched(fn, [row]))
                except Exception as row_exc:
                    results.append(row_exc)
        errors: list[str | None] = [None] * len(results)
        predictions: list[Any] = list(results)
        for row_index, result in enumerate(results):
            if isinstance(result, BaseException):
                if self.options.fail_fast:
                    raise RowError(f"model failed on a row: {_error_text(result)}") from result
                predictions[row_index] = None
                errors[row_index] = _error_text(result)
                logger.debug("row %d failed: %s", row_index, result)
        out = frame.copy()
        out[self.options.prediction_column] = _column(predictions, frame.index)
        out[self.options.error_column] = pd.Series(errors, index=frame.index, dtype=object)
        return out

    # -- plain models: Ray Data's batch in, a batch out -------------------------------------

    def _call_plain(self, frame: pd.DataFrame) -> pd.DataFrame:
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
        out = out.reset_index(drop=True)
        out[self.options.error_column] = pd.Series([None] * len(out), dtype=object)
        return out

    def _predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        try:
            return call_sync(self._call_plain, frame)
        except Exception as exc:
            if self.options.fail_fast:
                raise RowError(f"model failed on a batch of {len(frame)} rows: {exc}") from exc
        parts = []
        for i in range(len(frame)):
            one = frame.iloc[i : i + 1].reset_index(drop=True)
            try:
                parts.append(call_sync(self._call_plain, one))
            except Exception as row_exc:
                failed = one.copy()
                failed[self.options.error_column] = _error_text(row_exc)
                parts.append(failed)
        return pd.concat(parts, ignore_index=True)


def _column(values: list[Any], index: pd.Index) -> pd.Series:
    """Predictions as a column: numbers stay numeric, arrays become lists (an Arrow list
    column), anything else (dicts, strings) is kept as it is."""
    return pd.Series([_native(v) for v in values], index=index, dtype=object)


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
