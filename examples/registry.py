"""The model-registry workflow: train a small model, log it to an MLflow store, register it and
point an alias at it. Then serve and batch-predict it by the alias, with no model class at all:

    python -m examples.registry --tracking-uri file:///tmp/mlruns        # train, register, alias
    export MLFLOW_TRACKING_URI=file:///tmp/mlruns MLFLOW_ALLOW_FILE_STORE=true
    shoal serve --model-uri models:/iris-registry@champion --model-name iris
    shoal batch-predict --model-uri models:/iris-registry@champion \\
        --input iris.csv --output predictions.parquet

Moving the alias (`--alias champion` on a newly trained version) is what the operator's registry
rollout follows: a ModelService with `uri: models:/iris-registry@champion` rolls to the new version.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence


def register(
    tracking_uri: str,
    name: str = "iris-registry",
    alias: str = "champion",
    max_iter: int = 1000,
    label_shift: int = 0,
) -> str:
    """Train, log, register and alias a scikit-learn iris classifier; returns its version.

    `label_shift` trains on the species numbers rotated by that much (0: the real labels), so
    a demo or a test can tell two versions apart by their answers."""
    import mlflow
    import sklearn
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    # MLflow 3 keeps the file store (no server, no network) behind this switch.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    data = load_iris()
    labels = (data.target + label_shift) % 3
    model = LogisticRegression(max_iter=max_iter).fit(data.data, labels)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=name,
            # stated, not inferred (MLflow would import the model again in a subprocess)
            pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
        )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return version


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--name", default="iris-registry")
    parser.add_argument("--alias", default="champion")
    parser.add_argument(
        "--label-shift", type=int, default=0, help="rotate the labels (tells versions apart)"
    )
    args = parser.parse_args(argv)
    version = register(args.tracking_uri, args.name, args.alias, label_shift=args.label_shift)
    print(f"registered {args.name} version {version} as @{args.alias}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
