"""Serving an MLflow model (`models:/name/version`, `models:/name@alias`, `runs:/id/path`, or a
local model directory) as a batched Shoal model through `mlflow.pyfunc`.

`shoal serve --model-uri models:/iris@champion` with no class serves the pyfunc itself; the
tracking/registry location comes from MLflow's own env (MLFLOW_TRACKING_URI, ...). Without one,
a registry or run URI is refused at load: MLflow would otherwise create `./mlflow.db` and look
there.

A row is one model input: an object (column -> value), or, for a model with a column
signature, a list of the columns' values in signature order (a V1 instance); the answer is that
row's prediction. The signature also gives the V2 metadata (`GET /v2/models/{m}`): one input
per column, so V2 clients may send one tensor per column, by name. MLflow's schema enforcement
errors (a missing column, a value of the wrong type) are the client's: 400 with MLflow's words.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from shoal.runtime.batching import batch
from shoal.runtime.errors import InvalidInput
from shoal.runtime.loading import LoadError

logger = logging.getLogger(__name__)

# MLflow column types -> V2 datatypes (binary and datetime have none: left out of metadata)
_V2_TYPES = {
    "boolean": "BOOL",
    "integer": "INT32",
    "long": "INT64",
    "float": "FP32",
    "double": "FP64",
    "string": "BYTES",
}
_FLOATS = ("float", "double")


def _needs_store(uri: str) -> bool:
    return uri.startswith(("models:/", "runs:/"))


class MlflowPyfunc:
    def __init__(self, uri: str) -> None:
        import mlflow
        import mlflow.pyfunc
        from mlflow.exceptions import MlflowException

        self.uri = uri
        if _needs_store(uri) and not _store_configured(mlflow):
            raise LoadError(
                f"{uri}: no MLflow tracking URI is set; set MLFLOW_TRACKING_URI (and "
                f"MLFLOW_REGISTRY_URI if the registry is elsewhere) to the store that holds it"
            )
        try:
            self.model = mlflow.pyfunc.load_model(uri)
        except MlflowException as exc:
            raise LoadError(
                f"{uri}: {exc.message} (tracking URI {mlflow.get_tracking_uri()}, "
                f"registry URI {mlflow.get_registry_uri()})"
            ) from None
        self.columns: list[str] = []
        self._float_columns: list[str] = []
        self.inputs: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []
        self._describe(self.model.metadata)
        logger.info("loaded MLflow model %s", uri)

    def _describe(self, metadata: Any) -> None:
        """V2 inputs/outputs and the column order from the model's signature, if it has one."""
        schema = metadata.get_input_schema() if metadata is not None else None
        if schema is not None and not schema.is_tensor_spec() and schema.has_input_names():
            for spec in schema.inputs:
                kind = spec.type.name if hasattr(spec.type, "name") else str(spec.type)
                self.columns.append(spec.name)
                if kind in _FLOATS:
                    self._float_columns.append(spec.name)
                if kind in _V2_TYPES:
                    self.inputs.append(
                        {"name": spec.name, "datatype": _V2_TYPES[kind], "shape": [-1]}
                        | ({"optional": True} if not spec.required else {})
                    )
            if len(self.inputs) != len(self.columns):  # a column V2 cannot carry
                self.inputs = []
        out = metadata.get_output_schema() if metadata is not None else None
        if out is not None and not out.is_tensor_spec() and len(out.inputs) == 1:
            kind = getattr(out.inputs[0].type, "name", "")
            if kind in _V2_TYPES:
                name = out.inputs[0].name or "prediction"
                self.outputs = [{"name": name, "datatype": _V2_TYPES[kind], "shape": [-1]}]

    def _frame(self, rows: list[Any]) -> Any:
        if not self.columns and not all(isinstance(r, dict) for r in rows):
            return np.asarray(rows)
        import pandas as pd

        if self.columns and not any(isinstance(r, dict) for r in rows):
            width = len(self.columns)
            for r in rows:
                if len(np.shape(r)) != 1 or len(r) != width:
                    raise InvalidInput(
                        f"a row must be an object or a list of {width} values "
                        f"({', '.join(self.columns)}), got {_short(r)}"
                    )
            frame = pd.DataFrame([list(r) for r in rows], columns=self.columns)
        else:
            frame = pd.DataFrame([dict(r) if isinstance(r, dict) else r for r in rows])
        # JSON has no float type for 5: a whole number in a double column is still a double
        for col in self._float_columns:
            if col in frame and frame[col].dtype.kind in "iu":
                frame[col] = frame[col].astype("float64")
        return frame

    @batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    def __call__(self, rows: list[Any]) -> list[Any]:
        from mlflow.exceptions import MlflowException

        try:
            out = self.model.predict(self._frame(rows))
        except MlflowException as exc:
            if exc.error_code != "INVALID_PARAMETER_VALUE":
                raise
            raise InvalidInput(_schema_message(exc.message)) from None
        if hasattr(out, "to_dict") and hasattr(out, "columns"):  # a DataFrame: one record per row
            records: list[Any] = out.to_dict(orient="records")
            return records
        if hasattr(out, "to_numpy"):  # a Series
            out = out.to_numpy()
        result: list[Any] = list(np.asarray(out))
        return result


def _store_configured(mlflow: Any) -> bool:
    return bool(
        os.environ.get("MLFLOW_TRACKING_URI")
        or os.environ.get("MLFLOW_REGISTRY_URI")
        or mlflow.tracking.is_tracking_uri_set()
    )


def _schema_message(message: str) -> str:
    """MLflow's reason without the dump of the data it was given (which may be large)."""
    head, sep, reason = message.partition("Error: ")
    return f"MLflow schema enforcement: {reason.strip() if sep else head.strip()}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
