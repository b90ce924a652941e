"""The offline predictor finds the rows at fault with the serving rule (runtime/isolation.py):
the same bisection, the same bound, the same opt-out. Called as Ray Data's actor calls it, with
an Arrow batch (no Ray needed to judge the rule)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from shoal.offline.predictor import Predictor, PredictorOptions
from shoal.runtime.loading import ModelSpec

MODELS = "tests.offline.offline_models"


def predictor(cls: str) -> tuple[Predictor, Any]:
    p = Predictor(ModelSpec(cls.lower(), f"{MODELS}:{cls}"), PredictorOptions(device="cpu"))
    return p, p.model


def test_one_bad_row_is_found_by_bisection_as_online() -> None:
    p, model = predictor("Picky")
    values = [float(i) for i in range(16)]
    values[11] = -1.0
    out = p(pa.table({"x": values}))
    errors = out.column("error").to_pylist()
    assert [i for i, e in enumerate(errors) if e is not None] == [11]
    assert errors[11] == "ValueError: negative input"
    preds = out.column("prediction").to_pylist()
    assert [v for i, v in enumerate(preds) if i != 11] == [
        2 * v for i, v in enumerate(values) if i != 11
    ]
    # the batch, then two calls a level down to the bad row: as `shoal serve` does it
    assert model.calls == [16, 8, 8, 4, 4, 2, 2, 1, 1]


def test_a_model_that_opts_out_fails_its_whole_batch_without_retrying() -> None:
    p, model = predictor("PickyNoRetry")
    out = p(pa.table({"x": [1.0, -1.0, 2.0, 3.0]}))
    assert out.column("error").to_pylist() == ["ValueError: negative input"] * 4
    assert out.column("prediction").null_count == 4
    assert model.calls == [4]


def test_a_plain_frame_model_is_bisected_too() -> None:
    p, model = predictor("PickyFrame")
    out = p(pa.table({"a": [1.0, 2.0, -3.0, 4.0]})).to_pandas()
    assert out.error.isna().tolist() == [True, True, False, True]
    assert out.error.tolist()[2] == "ValueError: negative a"
    assert out.y.tolist()[:2] == [2.0, 4.0]
    assert out.y.tolist()[3] == 8.0
    assert model.calls == [4, 2, 2, 1, 1]
