"""MLflow registry aliases: `models:/name@alias` -> `models:/name/<version>`.

The operator pins replicas to a version, so a moved alias becomes a changed pod template and
therefore a rolling update (never replicas silently loading different versions). The MLflow
client is synchronous; it runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@\s]+)@(?P<alias>[A-Za-z0-9_-]+)$")


@dataclass(frozen=True)
class Resolution:
    uri: str
    version: str


class ResolutionError(Exception):
    """The alias could not be resolved (unknown model or alias, registry unreachable)."""


def is_alias(uri: str | None) -> bool:
    return uri is not None and ALIAS_URI.match(uri) is not None


def resolve_sync(uri: str, tracking_uri: str | None) -> Resolution:
    match = ALIAS_URI.match(uri)
    if match is None:
        raise ValueError(f"not a registry alias URI: {uri}")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:  # the operator image may be built without the ml extra
        raise ResolutionError("mlflow is not installed in the operator") from exc
    if tracking_uri is None:
        raise ResolutionError("the operator has no MLFLOW_TRACKING_URI to resolve aliases with")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        mv = client.get_model_version_by_alias(match["name"], match["alias"])
    except Exception as exc:  # MlflowException and transport errors alike
        raise ResolutionError(f"{uri}: {exc}".splitlines()[0][:500]) from exc
    return Resolution(uri=f"models:/{match['name']}/{mv.version}", version=str(mv.version))


async def resolve(uri: str, tracking_uri: str | None) -> Resolution:
    return await asyncio.to_thread(resolve_sync, uri, tracking_uri)
