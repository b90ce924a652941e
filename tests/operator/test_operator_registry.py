"""Registry alias resolution against a real local MLflow store (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.operator import registry as reg


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite-backed MLflow registry for the module (creating one takes seconds)."""
    from mlflow.tracking import MlflowClient

    tmp_path: Path = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("iris")
    for i in (1, 2):
        client.create_model_version("iris", source=str(tmp_path / f"v{i}"))
    client.set_registered_model_alias("iris", "champion", "1")
    return uri


async def test_alias_resolves_and_follows_moves(store: str) -> None:
    from mlflow.tracking import MlflowClient

    uri = store
    got = await reg.resolve("models:/iris@champion", uri)
    assert got == reg.Resolution(uri="models:/iris/1", version="1")
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(
        "iris", "champion", "2"
    )
    assert (await reg.resolve("models:/iris@champion", uri)).uri == "models:/iris/2"
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(
        "iris", "champion", "1"
    )


async def test_unknown_alias_and_model_are_errors(store: str) -> None:
    uri = store
    with pytest.raises(reg.ResolutionError, match="nope"):
        await reg.resolve("models:/iris@nope", uri)
    with pytest.raises(reg.ResolutionError, match="missing"):
        await reg.resolve("models:/missing@champion", uri)


async def test_no_tracking_uri_is_an_error() -> None:
    with pytest.raises(reg.ResolutionError, match="MLFLOW_TRACKING_URI"):
        await reg.resolve("models:/iris@champion", None)


@pytest.mark.parametrize(
    ("uri", "alias"),
    [
        ("models:/iris@champion", True),
        ("models:/iris/3", False),
        ("file:///m", False),
        (None, False),
    ],
)
def test_is_alias(uri: str | None, alias: bool) -> None:
    assert reg.is_alias(uri) is alias
