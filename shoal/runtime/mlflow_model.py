"""Serving an MLflow model (`models:/name/version`, `models:/name@alias`, `runs:/id/path`, or a
local model directory) as a batched Shoal model through `mlflow.pyfunc`.

`shoal serve --model-uri models:/iris@champion` with no class serves the pyfunc itself; the
tracking/registry location comes from MLflow's own env (MLFLOW_TRACKING_URI, ...).
A row is one model input: a list of features, or an object (column -> value) for models with a
column signature; the answer is that row's prediction.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from shoal.runtime.batching import batch

logger = logging.getLogger(__name__)


class MlflowPyfunc:
    def __init__(self, uri: str) -> None:
        import mlflow.pyfunc

        self.uri = uri
        self.model = mlflow.pyfunc.load_model(uri)
        logger.info("loaded MLflow model %s", uri)

    def _frame(self, rows: list[Any]) -> Any:
        if all(isinstance(r, dict) for r in rows):
            import pandas as pd

            return pd.DataFrame(rows)
        return np.asarray(rows)

    @batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    def __call__(self, rows: list[Any]) -> list[Any]:
        out = self.model.predict(self._frame(rows))
        if hasattr(out, "to_dict") and hasattr(out, "columns"):  # a DataFrame: one record per row
            records: list[Any] = out.to_dict(orient="records")
            return records
        if hasattr(out, "to_numpy"):  # a Series
            out = out.to_numpy()
        result: list[Any] = list(np.asarray(out))
        return result
