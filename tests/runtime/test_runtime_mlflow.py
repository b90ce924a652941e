"""MLflow URIs against a local MLflow file store (no network): models:/name/version,
models:/name@alias and runs:/ served by `shoal serve --model-uri`, a class receiving the URI as
`uri=`; a model with a column signature: V2 metadata and inputs by column, schema errors as
400 for their own request only, the default name from the registry; load errors that say
where MLflow looked."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.runtime.loading import MLFLOW_TARGET, ModelSpec, instantiate
from shoal.runtime.mlflow_model import MlflowPyfunc
from shoal.runtime.testing import MLFLOW_OFFLINE, ServeProcess, batch_stats, mlflow_store

# MLflow's own import and logging warnings are not what these tests judge.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.timeout(300),  # an MLflow import per server, on two shared cores
]
# Given, so MLflow does not infer them in a subprocess that imports the model (a minute under
# load).
PIP = {"pip_requirements": ["scikit-learn"]}
ROOT = Path(__file__).resolve().parents[2]
OFFLINE = MLFLOW_OFFLINE
SETOSA, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [7.7, 3.0, 6.1, 2.3]


COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A file-store tracking URI with model `iris` v1 (alias champion, no signature) and
    `iris-columns` v1 (alias champion, a column signature); returns (uri, run id of iris)."""
    import mlflow
    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    uri = (tmp_path_factory.mktemp("mlflow") / "mlruns").as_uri()  # created by MLflow
    with mlflow_store(uri):  # the environment MLflow and we set is put back after
        data = load_iris()
        model = LogisticRegression(max_iter=1000).fit(data.data, data.target)
        with mlflow.start_run() as run:
            mlflow.sklearn.log_model(model, name="model", registered_model_name="iris", **PIP)
        frame = pd.DataFrame(data.data, columns=COLUMNS)
        named = LogisticRegression(max_iter=1000).fit(frame, data.target)
        with mlflow.start_run():
            mlflow.sklearn.log_model(
                named,
                name="model",
                registered_model_name="iris-columns",
                input_example=frame[:2],
                **PIP,
            )
        client = mlflow.MlflowClient()
        client.set_registered_model_alias("iris", "champion", "1")
        client.set_registered_model_alias("iris-columns", "champion", "1")
        yield uri, run.info.run_id


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


def _columns(row: list[float]) -> dict[str, float]:
    return dict(zip(COLUMNS, row, strict=True))


async def test_a_row_missing_a_column_is_400_and_its_batch_mates_get_answers(
    store: tuple[str, str],
) -> None:
    tracking, _ = store
    env = {**OFFLINE, "MLFLOW_TRACKING_URI": tracking}
    # one batch of all five: a long wait, room for them all
    knobs = ("--max-batch-size", "5", "--batch-wait-timeout-s", "2")
    with ServeProcess(
        "--model-uri", "models:/iris-columns@champion", *knobs, cwd=ROOT, env=env
    ) as proc:
        good: list[dict[str, Any]] = [_columns(SETOSA), _columns(VIRGINICA)] * 2
        bad = {k: v for k, v in _columns(SETOSA).items() if k != "petal_width"}
        # The default name is the registry's: no --model-name given.
        url = "/v1/models/iris-columns:predict"
        async with httpx.AsyncClient(base_url=proc.url, timeout=60) as client:
            answers = await asyncio.gather(
                *(
                    client.post(url, json={"instances": [row]})
                    for row in [*good[:2], bad, *good[2:]]
                )
            )
            metrics = (await client.get("/metrics")).text
    codes = [a.status_code for a in answers]
    assert codes == [200, 200, 400, 200, 200], [a.text for a in answers]
    assert [a.json()["predictions"] for a in answers if a.status_code == 200] == [[0], [2]] * 2
    assert "MLflow schema enforcement: Model is missing inputs ['petal_width']" in answers[2].text
    assert batch_stats(metrics, "iris-columns") == (1.0, 5.0)  # they shared one batch


def test_v2_metadata_and_inputs_by_column_come_from_the_signature(store: tuple[str, str]) -> None:
    tracking, _ = store
    env = {**OFFLINE, "MLFLOW_TRACKING_URI": tracking}
    args = ("--model-uri", "models:/iris-columns@champion")
    with ServeProcess(*args, cwd=ROOT, env=env) as proc:
        meta = httpx.get(f"{proc.url}/v2/models/iris-columns", timeout=30).json()
        assert meta["inputs"] == [{"name": c, "datatype": "FP64", "shape": [-1]} for c in COLUMNS]
        assert [o["datatype"] for o in meta["outputs"]] == ["INT64"]
        body = {
            "inputs": [
                {"name": c, "datatype": "FP64", "shape": [2], "data": [SETOSA[i], VIRGINICA[i]]}
                for i, c in enumerate(COLUMNS)
            ]
        }
        r = httpx.post(f"{proc.url}/v2/models/iris-columns/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [0, 2]
        # a V1 instance may still be the columns' values in signature order, ints included
        r = httpx.post(
            f"{proc.url}/v1/models/iris-columns:predict",
            json={"instances": [SETOSA, [8, 3, 6, 2]]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"predictions": [0, 2]}


def test_an_unknown_registered_model_names_the_tracking_uri(store: tuple[str, str]) -> None:
    tracking, _ = store
    env = {**OFFLINE, "MLFLOW_TRACKING_URI": tracking}
    with pytest.raises(RuntimeError, match="exited with 1") as info:
        ServeProcess("--model-uri", "models:/no-such-model@champion", cwd=ROOT, env=env).start()
    assert "Registered Model with name=no-such-model not found" in str(info.value)
    assert f"tracking URI {tracking}" in str(info.value)


def test_no_tracking_uri_is_a_clear_load_error_and_no_stray_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with pytest.raises(RuntimeError, match="exited with 1") as info:
        ServeProcess("--model-uri", "models:/iris@champion", cwd=tmp_path, env=OFFLINE).start()
    assert "no MLflow tracking URI is set; set MLFLOW_TRACKING_URI" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no ./mlflow.db, no ./mlruns
