"""The registry workflow end to end, as examples/registry.py documents it: train and register
with an alias in a local MLflow file store, serve by alias, move the alias to a version that
answers differently and serve again, batch-predict by alias, and check each against the
registered version loaded directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest

from examples.registry import register
from shoal.runtime.testing import MLFLOW_OFFLINE, ServeProcess, mlflow_store

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]
ROOT = Path(__file__).resolve().parents[2]
OFFLINE = MLFLOW_OFFLINE


@pytest.mark.timeout(600)  # four MLflow imports and a Ray start on two shared cores
def test_register_serve_and_batch_predict_by_alias(tmp_path: Path) -> None:
    import mlflow
    import mlflow.pyfunc
    from sklearn.datasets import load_iris

    tracking = (tmp_path / "mlruns").as_uri()
    proc = subprocess.run(
        [sys.executable, "-m", "examples.registry", "--tracking-uri", tracking],
        cwd=ROOT,
        env={**os.environ, **OFFLINE},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "registered iris-registry version 1 as @champion" in proc.stdout
    iris = load_iris()
    features = iris.data.tolist()
    env = {**OFFLINE, "MLFLOW_TRACKING_URI": tracking}
    uri = "models:/iris-registry@champion"

    def served() -> list[int]:
        with ServeProcess("--model-uri", uri, "--model-name", "iris", cwd=ROOT, env=env) as s:
            r = httpx.post(
                f"{s.url}/v1/models/iris:predict", json={"instances": features[::5]}, timeout=30
            )
            assert r.status_code == 200, r.text
            answer: list[int] = r.json()["predictions"]
            return answer

    with mlflow_store(tracking):
        version_1 = mlflow.pyfunc.load_model("models:/iris-registry/1")
        first = [int(v) for v in version_1.predict(iris.data)]
        assert served() == first[::5]
        # Version 2 answers differently (labels rotated); moving the alias must show it.
        assert register(tracking, label_shift=1) == "2"
        direct = mlflow.pyfunc.load_model("models:/iris-registry/2")
        expected = [int(v) for v in direct.predict(iris.data)]
    assert expected != first
    assert sum(a != b for a, b in zip(expected, first, strict=True)) > 100  # most rows
    assert served() == expected[::5]

    src = tmp_path / "iris.csv"
    pd.DataFrame(iris.data, columns=[f"x{i}" for i in range(4)]).assign(
        row=range(len(features))
    ).to_csv(src, index=False)
    out = tmp_path / "pred.parquet"
    batch = subprocess.run(
        [
            sys.executable,
            "-m",
            "shoal.cli",
            "batch-predict",
            "--model-uri",
            uri,
            "--input",
            str(src),
            "--output",
            str(out),
            "--input-columns",
            "x0,x1,x2,x3",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert batch.returncode == 0, batch.stderr[-3000:]
    assert json.loads(batch.stdout.strip().splitlines()[-1])["failed"] == 0
    frame = pd.read_parquet(out).sort_values("row")
    assert [int(p) for p in frame.prediction] == expected
