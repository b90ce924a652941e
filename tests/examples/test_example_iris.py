"""examples/iris.py served by `shoal serve`: single models and the ensemble (in-process
handles, and handles over HTTP to another replica via SHOAL_GATEWAY_URL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoal.runtime.testing import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
SETOSA = [5.1, 3.5, 1.4, 0.2]
VERSICOLOR = [6.4, 3.2, 4.5, 1.5]
VIRGINICA = [7.7, 3.0, 6.1, 2.3]


@pytest.fixture(scope="module")
def members() -> Iterator[ServeProcess]:
    with ServeProcess(
        "iris-logistic=examples.iris:LogisticIris",
        "iris-forest=examples.iris:ForestIris",
        "iris=examples.iris:IrisEnsemble",
        "classifier=examples.iris:Classifier",
        cwd=ROOT,
    ) as proc:
        yield proc


def predict(url: str, model: str, rows: list[list[float]]) -> list[dict[str, object]]:
    r = httpx.post(f"{url}/v1/models/{model}:predict", json={"instances": rows}, timeout=30)
    assert r.status_code == 200, r.text
    predictions: list[dict[str, object]] = r.json()["predictions"]
    return predictions


@pytest.mark.parametrize("model", ["iris-logistic", "iris-forest", "iris", "classifier"])
def test_each_model_classifies_the_three_species(members: ServeProcess, model: str) -> None:
    answers = predict(members.url, model, [SETOSA, VERSICOLOR, VIRGINICA])
    assert [a["class"] for a in answers] == ["setosa", "versicolor", "virginica"]
    for a in answers:
        probs = a["probabilities"]
        assert isinstance(probs, list)
        assert sum(probs) == pytest.approx(1.0)


def test_v2_gives_one_tensor_per_output(members: ServeProcess) -> None:
    body = {
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": SETOSA + VIRGINICA}]
    }
    r = httpx.post(f"{members.url}/v2/models/iris-logistic/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["class"] == {
        "name": "class",
        "datatype": "BYTES",
        "shape": [2],
        "data": ["setosa", "virginica"],
    }
    assert outputs["probabilities"]["shape"] == [2, 3]
    assert outputs["probabilities"]["datatype"] == "FP64"


def test_a_malformed_row_is_400_for_its_request_only(members: ServeProcess) -> None:
    r = httpx.post(
        f"{members.url}/v1/models/iris-forest:predict", json={"instances": [[1, 2, 3]]}, timeout=30
    )
    assert r.status_code == 400
    assert "a row must be 4 numbers" in r.json()["error"]


def test_ensemble_through_another_replica_over_http(members: ServeProcess) -> None:
    with ServeProcess(
        "iris=examples.iris:IrisEnsemble", cwd=ROOT, env={"SHOAL_GATEWAY_URL": members.url}
    ) as front:
        answers = predict(front.url, "iris", [VERSICOLOR])
        local = predict(members.url, "iris", [VERSICOLOR])
        assert answers[0]["class"] == "versicolor"
        assert answers[0]["probabilities"] == pytest.approx(local[0]["probabilities"])
