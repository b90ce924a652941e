"""What the gateway answers itself: health, readiness, metrics, server metadata and the model
list (admission has already checked the method and the token for these routes)."""

from __future__ import annotations

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shoal.gateway.admission import SELF_METHODS, Admission, header
from shoal.gateway.cycle import ResponseCycle
from shoal.gateway.errors import MethodNotAllowed, NotFound
from shoal.gateway.metrics import GatewayMetrics
from shoal.gateway.registry import Registry
from shoal.gateway.routing import Route, RouteKind
from shoal.gateway.wire import JSON_HEADER, Request

_METRICS_HEADER = b"content-type: " + CONTENT_TYPE_LATEST.encode() + b"\r\n"
_METADATA = b'{"name":"shoal-gateway","version":"1","extensions":[]}'


class Answers:
    def __init__(self, registry: Registry, metrics: GatewayMetrics, admission: Admission) -> None:
        self.registry = registry
        self.metrics = metrics
        self.admission = admission

    def gateway_route(self, req: Request, cycle: ResponseCycle, kind: RouteKind) -> None:
        """Answer a request for the gateway itself (any route kind but MODEL and NOT_FOUND)."""
        if kind is RouteKind.LIVE:
            cycle.write_full(200, JSON_HEADER, b'{"live":true}')
        elif kind is RouteKind.READY:
            if self.registry.synced:
                cycle.write_full(200, JSON_HEADER, b'{"ready":true}')
            else:
                cycle.write_full(503, JSON_HEADER + cycle.retry_after, b'{"ready":false}')
        elif kind is RouteKind.METRICS:
            body = generate_latest(self.metrics.prometheus)
            cycle.write_full(200, _METRICS_HEADER, body)
        elif kind is RouteKind.SERVER_METADATA:
            cycle.write_full(200, JSON_HEADER, _METADATA)
        elif kind is RouteKind.LIST_MODELS:
            models = self.admission.visible_models(header(req, b"authorization"))
            cycle.write_full(200, JSON_HEADER, orjson.dumps({"models": models}))
        else:  # pragma: no cover - admission answers the rest
            cycle.error(NotFound(f"no route for {req.path[:100]}"))


class MetricsEndpoint:
    """The handler of the metrics listener (`metrics_port`): /metrics and health, no token.
    Meant to be reachable by the scraper only (the chart exposes that port to it alone)."""

    _KINDS = frozenset({RouteKind.METRICS, RouteKind.LIVE, RouteKind.READY})

    def __init__(self, answers: Answers) -> None:
        self._answers = answers

    def admit(self, req: Request) -> None:
        r = self._answers.admission.route_of(req.path)
        if r.kind not in self._KINDS:
            raise NotFound("this port serves /metrics and /v2/health/{live,ready} only")
        if req.method not in SELF_METHODS:
            raise MethodNotAllowed("only GET and HEAD here")
        req.admitted = r

    async def handle(self, req: Request, cycle: ResponseCycle) -> None:
        assert isinstance(req.admitted, Route)
        self._answers.gateway_route(req, cycle, req.admitted.kind)
