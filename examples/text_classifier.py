"""A small torch text classifier with its own FastAPI ingress: business logic on top of the
model. `/classify` answers the top label only when the model is confident (>= threshold,
default 0.9) and "other" below it; the standard V1/V2 routes give the raw scores.

    shoal serve topics=examples.text_classifier:TopicClassifier
    curl -s localhost:8000/topics/classify -d '{"text": "the striker scored a late goal"}'
    # {"label":"sports","confidence":0.99...}     (also at /classify: see the runtime docs)

The model is a bag-of-words linear layer trained at load, deterministically (seeded), on a
tiny built-in corpus: it shows the serving path, not NLP quality.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

import shoal


class Query(BaseModel):
    text: str


CORPUS: dict[str, list[str]] = {
    "sports": [
        "the striker scored a goal in the football match",
        "the team won the championship game last night",
        "a late goal won the match for the home team",
        "the tennis player served an ace to win the set",
        "the coach praised the players after the game",
        "fans cheered as the runner crossed the finish line",
    ],
    "tech": [
        "the new laptop has a faster processor and more memory",
        "the software update fixes a bug in the operating system",
        "engineers released a new version of the database software",
        "the phone has a better camera and a longer battery",
        "developers deploy code to the cloud with containers",
        "the chip maker announced a faster graphics processor",
    ],
    "food": [
        "bake the bread in a hot oven until golden",
        "the chef cooked pasta with tomato sauce and basil",
        "add salt and pepper to the soup and stir",
        "the restaurant serves fresh fish and rice",
        "mix flour sugar and eggs to make the cake",
        "grill the vegetables and serve with cheese",
    ],
}


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


class TopicClassifier:
    def __init__(self, threshold: float = 0.9, seed: int = 0, epochs: int = 150) -> None:
        import torch

        self.threshold = threshold
        self.labels = sorted(CORPUS)
        self.vocab = {
            w: i
            for i, w in enumerate(
                sorted({w for ts in CORPUS.values() for t in ts for w in tokens(t)})
            )
        }
        torch.manual_seed(seed)
        self.net = torch.nn.Linear(len(self.vocab), len(self.labels))
        x = torch.stack([self._bow(t) for label in self.labels for t in CORPUS[label]])
        y = torch.tensor([i for i, label in enumerate(self.labels) for _ in CORPUS[label]])
        opt = torch.optim.Adam(self.net.parameters(), lr=0.1)
        for _ in range(epochs):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(self.net(x), y).backward()  # type: ignore[no-untyped-call]
            opt.step()
        self.net.eval()

    def _bow(self, text: str) -> Any:
        import torch

        v = torch.zeros(len(self.vocab))
        for w in tokens(text):
            if w in self.vocab:
                v[self.vocab[w]] = 1.0
        return v

    @shoal.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    def __call__(self, texts: list[Any]) -> list[Any]:
        import torch

        # A non-string input fails only its own request (400), not the batch.
        checked = [
            t if isinstance(t, str) else ValueError("each input must be a string") for t in texts
        ]
        good = [t for t in checked if isinstance(t, str)]
        probs: Any = iter(
            torch.softmax(self.net(torch.stack([self._bow(t) for t in good])), dim=-1)
            if good
            else []
        )
        return [c if isinstance(c, Exception) else self._answer(next(probs)) for c in checked]

    def _answer(self, probs: Any) -> dict[str, Any]:
        best = int(probs.argmax())
        return {
            "label": self.labels[best],
            "confidence": float(probs[best]),
            "scores": [float(p) for p in probs],
        }

    def ingress(self) -> Any:
        """The custom routes, served at /{model_name}/... next to the standard ones."""
        from fastapi import FastAPI

        app = FastAPI(title="topic classifier")

        @app.post("/classify")
        async def classify(query: Query) -> dict[str, Any]:
            answer = await self(query.text)  # through the same batcher as V1/V2
            confident = answer["confidence"] >= self.threshold
            return {
                "label": answer["label"] if confident else "other",
                "confidence": answer["confidence"],
            }

        @app.get("/labels")
        async def labels() -> dict[str, Any]:
            return {"labels": self.labels, "threshold": self.threshold}

        return app
