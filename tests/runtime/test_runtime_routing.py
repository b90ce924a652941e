"""The runtime's routing table: each path to its handler, model and metrics labels."""

from __future__ import annotations

import pytest

from shoal.runtime.routing import Route, RouteKind, route

K = RouteKind


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2/health/live", Route(K.LIVE, template="/v2/health/live")),
        ("/v2/health/ready", Route(K.READY, template="/v2/health/ready")),
        ("/metrics", Route(K.METRICS, template="/metrics")),
        ("/v2", Route(K.SERVER_METADATA, protocol="v2", template="/v2")),
        ("/v2/", Route(K.SERVER_METADATA, protocol="v2", template="/v2")),
        ("/v1/models", Route(K.LIST_MODELS, protocol="v1", template="/v1/models")),
        ("/v1/models/", Route(K.LIST_MODELS, protocol="v1", template="/v1/models")),
        (
            "/v2/models/iris/infer",
            Route(K.V2_INFER, "iris", "v2", "/v2/models/{model}/infer", "POST"),
        ),
        (
            "/v2/models/iris/versions/3/infer",
            Route(K.V2_INFER, "iris", "v2", "/v2/models/{model}/infer", "POST"),
        ),
        (
            "/v2/models/iris/ready",
            Route(K.V2_MODEL_READY, "iris", "v2", "/v2/models/{model}/ready"),
        ),
        ("/v2/models/iris", Route(K.V2_MODEL_METADATA, "iris", "v2", "/v2/models/{model}")),
        (
            "/v2/models/iris/versions/3",
            Route(K.V2_MODEL_METADATA, "iris", "v2", "/v2/models/{model}"),
        ),
        ("/v2/models/café", Route(K.V2_MODEL_METADATA, "café", "v2", "/v2/models/{model}")),
        (
            "/v1/models/iris:predict",
            Route(K.V1_PREDICT, "iris", "v1", "/v1/models/{model}:predict", "POST"),
        ),
        ("/v1/models/iris", Route(K.V1_MODEL_STATUS, "iris", "v1", "/v1/models/{model}")),
        # under the protocols' prefixes, but no route of theirs
        ("/v2/models/iris/explain", Route(K.NO_ROUTE, protocol="v2", template="/v2/*")),
        ("/v2/models//infer", Route(K.NO_ROUTE, protocol="v2", template="/v2/*")),
        ("/v2/models/iris/versions//infer", Route(K.NO_ROUTE, protocol="v2", template="/v2/*")),
        ("/v1/models/:predict", Route(K.NO_ROUTE, protocol="v1", template="/v1/*")),
        ("/v1/models/a/b", Route(K.NO_ROUTE, protocol="v1", template="/v1/*")),
        # everything else may belong to a model's own app
        ("/iris/predict", Route(K.INGRESS, protocol="ingress")),
        ("/", Route(K.INGRESS, protocol="ingress")),
        ("/v2/health/other", Route(K.INGRESS, protocol="ingress")),
        ("/metrics/", Route(K.INGRESS, protocol="ingress")),
    ],
)
def test_route(path: str, expected: Route) -> None:
    assert route(path) == expected


def test_the_cache_is_bounded() -> None:
    for i in range(10_000):
        route(f"/scan/{i}")
    info = route.cache_info()
    assert info.maxsize is not None
    assert info.currsize <= info.maxsize
