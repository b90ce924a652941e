"""examples/pipeline.py served by `shoal serve` as three models in one process: every answer
equals the steps applied by hand, the threshold turns unsure answers into "other", and a bad
input fails only its own request."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from examples.pipeline import clean_text
from examples.text_classifier import TopicClassifier
from shoal.runtime.testing import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    "The STRIKER scored a late GOAL!!",
    "Bake the bread in a hot oven.",
    "quantum entanglement of photons",
    "the new laptop has a faster processor",
]


def test_pipeline_matches_steps_by_hand_and_applies_threshold() -> None:
    models = [
        "preprocess=examples.pipeline:Preprocess",
        "topics=examples.text_classifier:TopicClassifier",
        "pipeline=examples.pipeline:Pipeline",
    ]
    with ServeProcess(*models, cwd=ROOT) as server:
        r = httpx.post(
            f"{server.url}/v1/models/pipeline:predict", json={"instances": TEXTS}, timeout=60
        )
        assert r.status_code == 200, r.text
        answers = r.json()["predictions"]
        bad = httpx.post(
            f"{server.url}/v1/models/pipeline:predict", json={"instances": [42]}, timeout=60
        )
        assert bad.status_code == 400
        assert "string" in bad.json()["error"]

    classifier = TopicClassifier()  # seeded: the same weights as the served one
    cleaned = [clean_text(t) for t in TEXTS]
    by_hand = asyncio.run(_ask_all(classifier, cleaned))
    for text_clean, expected, answer in zip(cleaned, by_hand, answers, strict=True):
        assert answer["cleaned"] == text_clean
        assert answer["model_label"] == expected["label"]
        want = expected["label"] if expected["confidence"] >= 0.9 else "other"
        assert answer["label"] == want
    assert answers[0]["label"] == "sports"
    assert answers[2]["label"] == "other"  # nothing in the corpus: the model is unsure


async def _ask_all(classifier: TopicClassifier, texts: list[str]) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(classifier(t) for t in texts)))
