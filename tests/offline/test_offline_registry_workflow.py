"""The registry workflow end to end, as examples/registry.py documents it: train and register
with an alias in a local MLflow file store, serve by alias, batch-predict by alias, and check
both against the registered model loaded directly."""

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
from shoal.runtime.testing import ServeProcess

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]
ROOT = Path(__file__).resolve().parents[2]
OFFLINE = {"MLFLOW_ALLOW_FILE_STORE": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}


@pytest.mark.timeout(420)  # three MLflow imports and a Ray start on two shared cores
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
    # A second version moves the alias: serving and batch must follow it to version 2.
    os.environ.update(OFFLINE)
    try:
        assert register(tracking, max_iter=5) == "2"
        mlflow.set_tracking_uri(tracking)
        direct = mlflow.pyfunc.load_model("models:/iris-registry/2")
    finally:
        mlflow.set_tracking_uri("")
    iris = load_iris()
    features = iris.data.tolist()
    expected = [int(v) for v in direct.predict(iris.data)]

    env = {**OFFLINE, "MLFLOW_TRACKING_URI": tracking}
    uri = "models:/iris-registry@champion"
    with ServeProcess("--model-uri", uri, "--model-name", "iris", cwd=ROOT, env=env) as server:
        r = httpx.post(
            f"{server.url}/v1/models/iris:predict", json={"instances": features[:20]}, timeout=30
        )
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == expected[:20]

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
