"""Iris classifiers with scikit-learn, trained at load on sklearn's bundled iris data, and an
ensemble that asks both through `shoal.handle` in parallel.

    shoal serve iris-logistic=examples.iris:LogisticIris \
                iris-forest=examples.iris:ForestIris \
                iris=examples.iris:IrisEnsemble
    curl -s localhost:8000/v1/models/iris:predict -d '{"instances": [[5.1, 3.5, 1.4, 0.2]]}'

A row is four measurements (sepal length/width, petal length/width, cm); the answer is
{"class": name, "probabilities": [p_setosa, p_versicolor, p_virginica]}. In a cluster the
ensemble's handles go through the gateway (SHOAL_GATEWAY_URL) to the members' replicas.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

import shoal


def _features(row: Any) -> np.ndarray[Any, Any] | Exception:
    try:
        x = np.asarray(row, dtype=np.float64)
    except (TypeError, ValueError):
        return ValueError("a row must be 4 numbers")
    if x.shape != (4,):
        return ValueError(f"a row must be 4 numbers, got shape {list(x.shape)}")
    return x


class _SklearnIris:
    def __init__(self, estimator: Any) -> None:
        from sklearn.datasets import load_iris

        data = load_iris()
        self.classes = [str(n) for n in data.target_names]
        self.model = estimator.fit(data.data, data.target)

    @shoal.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    def __call__(self, rows: list[Any]) -> list[Any]:
        # One malformed row fails only its own request.
        checked = [_features(r) for r in rows]
        good = [x for x in checked if not isinstance(x, Exception)]
        probs = iter(self.model.predict_proba(np.stack(good)) if good else [])
        out: list[Any] = []
        for x in checked:
            if isinstance(x, Exception):
                out.append(x)
            else:
                p = next(probs)
                out.append({"class": self.classes[int(p.argmax())], "probabilities": p.tolist()})
        return out


class LogisticIris(_SklearnIris):
    def __init__(self, C: float = 1.0) -> None:
        from sklearn.linear_model import LogisticRegression

        super().__init__(LogisticRegression(C=C, max_iter=1000))


class ForestIris(_SklearnIris):
    def __init__(self, n_estimators: int = 50, seed: int = 0) -> None:
        from sklearn.ensemble import RandomForestClassifier

        super().__init__(RandomForestClassifier(n_estimators=n_estimators, random_state=seed))


class Classifier(_SklearnIris):
    """The classifier of the ModelService manifests (examples/iris*.yaml): logistic regression
    trained at load, or, with `uri`, a fitted scikit-learn model loaded from MLflow
    (`models:/iris@champion`, `runs:/...`, a local MLflow model directory) or a joblib file."""

    def __init__(self, uri: str | None = None, C: float = 1.0) -> None:
        if uri is None:
            from sklearn.linear_model import LogisticRegression

            super().__init__(LogisticRegression(C=C, max_iter=1000))
            return
        from sklearn.datasets import load_iris

        self.classes = [str(n) for n in load_iris().target_names]
        if uri.endswith((".joblib", ".pkl")):
            import joblib

            self.model = joblib.load(uri)
        else:
            import mlflow.sklearn

            self.model = mlflow.sklearn.load_model(uri)


class IrisEnsemble:
    """Averages its members' probabilities; members are called concurrently."""

    def __init__(self, members: list[str] | None = None) -> None:
        self.names = members or ["iris-logistic", "iris-forest"]
        self.members = [shoal.handle(name) for name in self.names]

    async def __call__(self, row: Any) -> dict[str, Any]:
        answers = await asyncio.gather(*(member(row) for member in self.members))
        probs = np.mean([a["probabilities"] for a in answers], axis=0)
        classes = ["setosa", "versicolor", "virginica"]
        return {"class": classes[int(probs.argmax())], "probabilities": probs.tolist()}
