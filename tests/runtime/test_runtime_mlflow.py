"""MLflow URIs against a local MLflow file store (no network): models:/name/version,
models:/name@alias and runs:/ served by `shoal serve --model-uri`, and a class receiving the
URI as `uri=`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoal.runtime.loading import MLFLOW_TARGET, ModelSpec, instantiate
from shoal.runtime.mlflow_model import MlflowPyfunc
from shoal.runtime.testing import ServeProcess

# MLflow's own import and logging warnings are not what these tests judge.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]
ROOT = Path(__file__).resolve().parents[2]
OFFLINE = {"MLFLOW_ALLOW_FILE_STORE": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
SETOSA, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [7.7, 3.0, 6.1, 2.3]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A file-store tracking URI with model `iris` v1 (alias champion); returns (uri, run id)."""
    import mlflow
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    uri = (tmp_path_factory.mktemp("mlflow") / "mlruns").as_uri()  # created by MLflow
    # MLflow 3 keeps the file store behind this switch; it needs no server and no network.
    os.environ.update(OFFLINE)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    data = load_iris()
    model = LogisticRegression(max_iter=1000).fit(data.data, data.target)
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(model, name="model", registered_model_name="iris")
    mlflow.MlflowClient().set_registered_model_alias("iris", "champion", "1")
    try:
        yield uri, run.info.run_id
    finally:
        mlflow.set_tracking_uri("")
        for key in OFFLINE:
            os.environ.pop(key, None)


def _serve_and_ask(env: dict[str, str], *args: str) -> None:
    with ServeProcess(*args, cwd=ROOT, env=env) as proc:
        r = httpx.post(
            f"{proc.url}/v1/models/iris:predict",
            json={"instances": [SETOSA, VIRGINICA]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"predictions": [0, 2]}


def test_registry_alias_from_env_only(store: tuple[str, str]) -> None:
    tracking, _ = store
    # env only, as the operator starts pods: no class, so the pyfunc itself is served
    _serve_and_ask(
        {
            **OFFLINE,
            "MLFLOW_TRACKING_URI": tracking,
            "SHOAL_MODEL_URI": "models:/iris@champion",
            "SHOAL_MODEL_NAME": "iris",
        }
    )


def test_runs_uri_from_flags(store: tuple[str, str]) -> None:
    tracking, run_id = store
    _serve_and_ask(
        {**OFFLINE, "MLFLOW_TRACKING_URI": tracking},
        "--model-uri",
        f"runs:/{run_id}/model",
        "--model-name",
        "iris",
    )


def test_registry_version_loads_in_process(store: tuple[str, str]) -> None:
    spec = ModelSpec(name="iris", target=MLFLOW_TARGET, uri="models:/iris/1")
    model, device = instantiate(spec, "cpu")
    assert device == "cpu"
    assert isinstance(model, MlflowPyfunc)
    assert MlflowPyfunc.__call__.func(model, [SETOSA, VIRGINICA]) == [0, 2]


def test_a_class_receives_the_registry_uri(store: tuple[str, str]) -> None:
    # examples/registry-alias.yaml: class examples.iris:Classifier with uri models:/iris@champion
    tracking, _ = store
    env = {**OFFLINE, "MLFLOW_TRACKING_URI": tracking}
    args = ("iris=examples.iris:Classifier", "--model-uri", "models:/iris@champion")
    with ServeProcess(*args, cwd=ROOT, env=env) as proc:
        r = httpx.post(
            f"{proc.url}/v1/models/iris:predict",
            json={"instances": [SETOSA, VIRGINICA]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert [p["class"] for p in r.json()["predictions"]] == ["setosa", "virginica"]
