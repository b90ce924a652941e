"""shoal.batch_predict on a real local Ray, checked row by row against the model called directly."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shoal.offline import BatchPredictConfig, batch_predict
from shoal.offline.pipeline import InputError
from shoal.offline.predictor import PredictorOptions, RowError
from shoal.runtime.loading import LoadError
from tests.offline.offline_models import WeightedSum

pytestmark = pytest.mark.usefixtures("local_ray")
MODELS = "tests.offline.offline_models"


def _frame(n: int, unlucky: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"f0": rng.uniform(0, 10, n), "f1": rng.uniform(0, 10, n)})
    frame.loc[[5, 77], "f0"] = [-1.0, -2.5]  # refused by the model row by row
    if unlucky:
        frame.loc[n // 2, "f0"] = 13.0  # makes its whole batch raise: only this row may fail
    return frame


def test_batched_model_matches_direct_calls_and_isolates_bad_rows(tmp_path: Path) -> None:
    frame = _frame(300)
    path = tmp_path / "in.parquet"
    frame.to_parquet(path)
    config = BatchPredictConfig(
        target=f"{MODELS}:WeightedSum", config={"weight": 0.5}, batch_size=64, max_actors=2
    )
    out = batch_predict(path, config).to_pandas().sort_values(["f0", "f1"]).reset_index(drop=True)
    expected_frame = frame.sort_values(["f0", "f1"]).reset_index(drop=True)
    model = WeightedSum(weight=0.5)
    raw = inspect.getattr_static(WeightedSum, "__call__").func  # the undecorated batch function

    def call_alone(f0: float, f1: float) -> object:
        try:
            return raw(model, [[f0, f1]])[0]
        except Exception as exc:
            return exc

    direct = [call_alone(r.f0, r.f1) for r in expected_frame.itertuples()]
    assert len(out) == len(frame)
    for want, got in zip(direct, out.itertuples(), strict=True):
        if isinstance(want, BaseException):
            assert pd.isna(got.prediction)
            assert isinstance(got.error, str)
        else:
            assert pd.isna(got.error)
            assert got.prediction == pytest.approx(want)
    failed = out[out.error.notna()]
    assert sorted(failed.f0.tolist()) == [-2.5, -1.0, 13.0]
    assert "negative feature -1.0" in failed[failed.f0 == -1.0].error.iloc[0]
    assert "unlucky row" in failed[failed.f0 == 13.0].error.iloc[0]


def test_fail_fast_stops_on_the_first_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    _frame(100, unlucky=False).to_csv(path, index=False)
    config = BatchPredictConfig(
        target=f"{MODELS}:WeightedSum", options=PredictorOptions(fail_fast=True)
    )
    with pytest.raises(Exception, match="negative feature") as info:
        batch_predict(path, config).materialize()
    assert RowError.__name__ in str(info.value)


def test_async_batched_model_on_jsonl_text(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    texts = ["a", "bb", "hello world", ""]
    path.write_text("".join(f'{{"text": "{t}"}}\n' for t in texts))
    out = batch_predict(path, BatchPredictConfig(target=f"{MODELS}:AsyncLength")).to_pandas()
    assert dict(zip(out.text, out.prediction, strict=True)) == {t: len(t) for t in texts}


def test_plain_pandas_model_and_actor_pool_bound(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pd.DataFrame({"a": np.arange(2000, dtype=np.float64)}).to_parquet(path)
    config = BatchPredictConfig(
        target=f"{MODELS}:PlainFrame", config={"offset": 1.0}, batch_size=50, max_actors=2
    )
    out = batch_predict(path, config).to_pandas()
    assert sorted(out.a.tolist()) == list(range(2000))
    assert (out.y == out.a * 2 + 1.0).all()
    assert out.error.isna().all()
    assert 1 <= out.pid.nunique() <= 2


def test_plain_numpy_model(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    pd.DataFrame({"a": [1, 2, 3], "b": [10, 20, 30]}).to_csv(path, index=False)
    config = BatchPredictConfig(
        target=f"{MODELS}:PlainNumpy", options=PredictorOptions(batch_format="numpy")
    )
    out = batch_predict(path, config).to_pandas().sort_values("a")
    assert out.y.tolist() == [11, 22, 33]


def test_missing_input_and_bad_model_path_are_clear(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        batch_predict(tmp_path / "nope.csv", BatchPredictConfig(target=f"{MODELS}:PlainFrame"))
    (tmp_path / "x.txt").write_text("a\n1\n")
    with pytest.raises(InputError, match="unknown format"):
        batch_predict(tmp_path / "x.txt", BatchPredictConfig(target=f"{MODELS}:PlainFrame"))
    with pytest.raises(LoadError, match="has no attribute"):
        batch_predict(tmp_path / "x.txt", BatchPredictConfig(target=f"{MODELS}:Nope"))


def test_config_bounds_are_validated() -> None:
    with pytest.raises(ValueError, match="min actors <= max actors"):
        BatchPredictConfig(target="m:C", min_actors=3, max_actors=2)
    with pytest.raises(ValueError, match="batch size"):
        BatchPredictConfig(target="m:C", batch_size=0)
