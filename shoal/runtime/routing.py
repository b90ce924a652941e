"""Which handler a request path is for: a pure function over a table, tested by table.

The path is the ASGI `path` (already percent-decoded by the server, so `/v2/models/caf%C3%A9`
names the model `café`). Each path is parsed once, here; the handlers get the model name and
the protocol from the `Route`. Results are cached (bounded): the hot path pays one dict lookup
for a path it has seen, and a scan of random paths only cycles the cache.
"""

from __future__ import annotations

import enum
import functools
from typing import NamedTuple


class RouteKind(enum.Enum):
    LIVE = "live"
    READY = "ready"
    METRICS = "metrics"
    SERVER_METADATA = "server_metadata"
    """GET /v2"""
    LIST_MODELS = "list_models"
    """GET /v1/models"""
    V2_INFER = "v2_infer"
    V2_MODEL_READY = "v2_model_ready"
    V2_MODEL_METADATA = "v2_model_metadata"
    V1_PREDICT = "v1_predict"
    V1_MODEL_STATUS = "v1_model_status"
    NO_ROUTE = "no_route"
    """Under /v1/models or /v2/models, but no route of the protocol."""
    INGRESS = "ingress"
    """Anything else: a model's own app, if one claims it (else 404)."""


class Route(NamedTuple):
    kind: RouteKind
    model: str = ""
    protocol: str = "other"
    """The `protocol` metrics label: v1, v2, ingress or other."""
    template: str = ""
    """The `route` metrics label: the path with the model name as `{model}` (bounded)."""
    method: str = ""
    """The one method the route takes ("" = any); another gets 405."""


_EXACT: dict[str, Route] = {
    "/v2/health/live": Route(RouteKind.LIVE, template="/v2/health/live"),
    "/v2/health/ready": Route(RouteKind.READY, template="/v2/health/ready"),
    "/metrics": Route(RouteKind.METRICS, template="/metrics"),
    "/v2": Route(RouteKind.SERVER_METADATA, protocol="v2", template="/v2"),
    "/v2/": Route(RouteKind.SERVER_METADATA, protocol="v2", template="/v2"),
    "/v1/models": Route(RouteKind.LIST_MODELS, protocol="v1", template="/v1/models"),
    "/v1/models/": Route(RouteKind.LIST_MODELS, protocol="v1", template="/v1/models"),
}

# /v2/models/{name}[/versions/{v}]/<tail>
_V2_TAILS: dict[str, tuple[RouteKind, str, str]] = {
    "infer": (RouteKind.V2_INFER, "/v2/models/{model}/infer", "POST"),
    "ready": (RouteKind.V2_MODEL_READY, "/v2/models/{model}/ready", ""),
    "": (RouteKind.V2_MODEL_METADATA, "/v2/models/{model}", ""),
}

_V2_NO_ROUTE = Route(RouteKind.NO_ROUTE, protocol="v2", template="/v2/*")
_V1_NO_ROUTE = Route(RouteKind.NO_ROUTE, protocol="v1", template="/v1/*")
_INGRESS = Route(RouteKind.INGRESS, protocol="ingress")


@functools.lru_cache(maxsize=4096)
def route(path: str) -> Route:
    exact = _EXACT.get(path)
    if exact is not None:
        return exact
    if path.startswith("/v2/models/"):
        return _v2_model_route(path[len("/v2/models/") :])
    if path.startswith("/v1/models/"):
        return _v1_model_route(path[len("/v1/models/") :])
    return _INGRESS


def _v2_model_route(rest: str) -> Route:
    name, _, tail = rest.partition("/")
    if tail.startswith("versions/"):
        version, _, tail = tail[len("versions/") :].partition("/")
        if not version:
            return _V2_NO_ROUTE
    found = _V2_TAILS.get(tail)
    if not name or found is None:
        return _V2_NO_ROUTE
    kind, template, method = found
    return Route(kind, name, "v2", template, method)


def _v1_model_route(rest: str) -> Route:
    if rest.endswith(":predict"):
        name = rest[: -len(":predict")]
        kind, template, method = RouteKind.V1_PREDICT, "/v1/models/{model}:predict", "POST"
    else:
        name = rest
        kind, template, method = RouteKind.V1_MODEL_STATUS, "/v1/models/{model}", ""
    if not name or "/" in name:
        return _V1_NO_ROUTE
    return Route(kind, name, "v1", template, method)
