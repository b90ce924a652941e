"""Which model a request path is for. Pure functions, table-tested."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

# Kubernetes Service names (RFC 1035 labels): the model name is the Service name.
_MODEL_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

_RESERVED_FIRST_SEGMENTS = frozenset({"v1", "v2", "metrics"})


class RouteKind(enum.Enum):
    MODEL = "model"
    """Forward to a replica of `Route.model`."""
    LIVE = "live"
    READY = "ready"
    METRICS = "metrics"
    SERVER_METADATA = "server_metadata"
    """GET /v2: the gateway answers for the server."""
    LIST_MODELS = "list_models"
    """GET /v1/models: the gateway lists the models it knows."""
    NOT_FOUND = "not_found"
    """A path under /v1 or /v2 that names no model."""


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    model: str = ""
    protocol: str = ""
    """'v1', 'v2' or 'custom' for model routes (a metrics label)."""


_LIVE = Route(RouteKind.LIVE)
_READY = Route(RouteKind.READY)
_METRICS = Route(RouteKind.METRICS)
_SERVER_METADATA = Route(RouteKind.SERVER_METADATA)
_LIST_MODELS = Route(RouteKind.LIST_MODELS)
_NOT_FOUND = Route(RouteKind.NOT_FOUND)


def is_model_name(name: str) -> bool:
    return _MODEL_NAME.fullmatch(name) is not None


def route(path: str) -> Route:
    """Route an origin-form path (no query). Custom ingress paths `/{name}/...` come back as MODEL
    routes for any well-formed name; the caller decides whether that model exists."""
    if path == "/metrics":
        return _METRICS
    parts = path.split("/")
    # parts[0] is "" for an absolute path.
    first = parts[1] if len(parts) > 1 else ""
    if first == "v2":
        if len(parts) == 2 or (len(parts) == 3 and parts[2] == ""):
            return _SERVER_METADATA
        if parts[2] == "health" and len(parts) == 4:
            if parts[3] == "live":
                return _LIVE
            if parts[3] == "ready":
                return _READY
            return _NOT_FOUND
        if parts[2] == "models" and len(parts) >= 4 and is_model_name(parts[3]):
            return Route(RouteKind.MODEL, parts[3], "v2")
        return _NOT_FOUND
    if first == "v1":
        if parts[2:] == ["models"] or parts[2:] == ["models", ""]:
            return _LIST_MODELS
        if len(parts) >= 4 and parts[2] == "models":
            # /v1/models/{name}, /v1/models/{name}:predict, /v1/models/{name}:explain
            name = parts[3].split(":", 1)[0]
            if is_model_name(name):
                return Route(RouteKind.MODEL, name, "v1")
        return _NOT_FOUND
    if first and first not in _RESERVED_FIRST_SEGMENTS and is_model_name(first):
        return Route(RouteKind.MODEL, first, "custom")
    return _NOT_FOUND
