"""examples/text_classifier.py under `shoal serve`: the FastAPI ingress with its 0.9
confidence threshold, next to the standard routes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoal.runtime.testing import ServeProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> Iterator[ServeProcess]:
    with ServeProcess("topics=examples.text_classifier:TopicClassifier", cwd=ROOT) as proc:
        yield proc


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("the striker scored a goal and the team won the match", "sports"),
        ("a faster processor and more memory in the new laptop", "tech"),
        ("bake the cake with flour sugar and eggs in the oven", "food"),
    ],
)
def test_confident_answers_keep_their_label(server: ServeProcess, text: str, label: str) -> None:
    r = httpx.post(f"{server.url}/topics/classify", json={"text": text}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == label
    assert body["confidence"] >= 0.9


def test_below_the_threshold_is_other(server: ServeProcess) -> None:
    r = httpx.post(
        f"{server.url}/topics/classify", json={"text": "quantum zebra umbrella"}, timeout=30
    )
    assert r.status_code == 200
    body = r.json()
    assert body["label"] == "other"
    assert body["confidence"] < 0.9


def test_ingress_is_also_at_root_paths_not_taken(server: ServeProcess) -> None:
    r = httpx.post(f"{server.url}/classify", json={"text": "the chef cooked pasta"}, timeout=30)
    assert r.status_code == 200
    assert r.json()["label"] == "food"
    assert httpx.get(f"{server.url}/topics/labels").json() == {
        "labels": ["food", "sports", "tech"],
        "threshold": 0.9,
    }


def test_ingress_validation_errors_come_from_fastapi(server: ServeProcess) -> None:
    r = httpx.post(f"{server.url}/topics/classify", json={"txt": "x"}, timeout=30)
    assert r.status_code == 422


def test_standard_routes_give_raw_scores(server: ServeProcess) -> None:
    r = httpx.post(
        f"{server.url}/v1/models/topics:predict",
        json={"instances": ["quantum zebra umbrella", 5]},
        timeout=30,
    )
    assert r.status_code == 400  # 5 is not a string: that request fails, with a message
    assert "each input must be a string" in r.json()["error"]
    r = httpx.post(
        f"{server.url}/v1/models/topics:predict",
        json={"instances": ["the phone has a better camera"]},
        timeout=30,
    )
    (answer,) = r.json()["predictions"]
    assert answer["label"] == "tech"
    assert sum(answer["scores"]) == pytest.approx(1.0)
    body = {
        "inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["grill the vegetables"]}
        ]
    }
    r = httpx.post(f"{server.url}/v2/models/topics/infer", json=body, timeout=30)
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["label"]["data"] == ["food"]
    assert outputs["scores"]["shape"] == [1, 3]
