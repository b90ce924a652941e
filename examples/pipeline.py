"""A serving pipeline: preprocess -> model -> business logic, each step its own model, composed
through `shoal.handle` (the custom-logic step of the Made-With-ML serving lesson).

    shoal serve preprocess=examples.pipeline:Preprocess \
                topics=examples.text_classifier:TopicClassifier \
                pipeline=examples.pipeline:Pipeline
    curl -s localhost:8000/v1/models/pipeline:predict \
         -d '{"instances": ["The STRIKER scored!!", "quantum entanglement"]}'

`Pipeline` cleans the text, asks the classifier, and answers its label only when the classifier
is confident (>= threshold), else "other": a low-confidence guess never reaches the user as a
fact. Locally the handles are in-process calls; in a cluster they go through the gateway.
"""

from __future__ import annotations

import re
from typing import Any

import shoal

STOPWORDS = frozenset(
    (
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "he",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "that",
        "the",
        "to",
        "was",
        "were",
        "will",
        "with",
    )
)


def clean_text(text: str) -> str:
    """Lowercase, letters and spaces only, stopwords dropped, whitespace collapsed."""
    words = re.sub(r"[^a-z]+", " ", text.lower()).split()
    return " ".join(w for w in words if w not in STOPWORDS)


class Preprocess:
    @shoal.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def __call__(self, texts: list[Any]) -> list[Any]:
        return [
            clean_text(t) if isinstance(t, str) else ValueError("each input must be a string")
            for t in texts
        ]


class Pipeline:
    def __init__(
        self, threshold: float = 0.9, preprocess: str = "preprocess", model: str = "topics"
    ) -> None:
        self.threshold = threshold
        self.preprocess = shoal.handle(preprocess)
        self.model = shoal.handle(model)

    async def __call__(self, text: Any) -> dict[str, Any]:
        cleaned = await self.preprocess(text)
        answer = await self.model(cleaned)
        confident = answer["confidence"] >= self.threshold
        return {
            "label": answer["label"] if confident else "other",
            "model_label": answer["label"],
            "confidence": answer["confidence"],
            "cleaned": cleaned,
        }
