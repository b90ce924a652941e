"""What the gateway answers itself: health, readiness, metrics, the model list, and the JSON
errors of the request path (with Retry-After and the request id where they apply)."""

from __future__ import annotations

import logging

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shoal.gateway.auth import Authenticator
from shoal.gateway.httpserver import HttpConnection
from shoal.gateway.metrics import GatewayMetrics
from shoal.gateway.registry import Registry
from shoal.gateway.routing import RouteKind
from shoal.gateway.wire import JSON_HEADER, Request, json_body

log = logging.getLogger(__name__)

_SELF_METHODS = frozenset({b"GET", b"HEAD"})
_METRICS_HEADER = b"content-type: " + CONTENT_TYPE_LATEST.encode() + b"\r\n"
_METADATA = b'{"name":"shoal-gateway","version":"1","extensions":[]}'


class Answers:
    def __init__(
        self,
        registry: Registry,
        metrics: GatewayMetrics,
        auth: Authenticator | None,
        retry_after_s: int,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.auth = auth
        self._retry_after = b"retry-after: %d\r\n" % retry_after_s

    def gateway_route(self, req: Request, conn: HttpConnection, kind: RouteKind) -> None:
        """Answer a request for the gateway itself (any route kind but MODEL)."""
        if kind is RouteKind.NOT_FOUND:
            self.error(conn, 404, f"no route for {req.path}", known_models=self.visible_models(req))
            return
        if req.method not in _SELF_METHODS:
            self.error(conn, 405, f"method {req.method.decode()} not allowed on {req.path}")
            return
        if self.auth is not None and (self.auth.protect_health or kind is RouteKind.LIST_MODELS):
            denial = self.auth.check(_header(req, b"authorization"), None)
            if denial is not None:
                self.deny(conn, denial.status, denial.message)
                return
        if kind is RouteKind.LIVE:
            conn.write_full(200, JSON_HEADER, b'{"live":true}')
        elif kind is RouteKind.READY:
            if self.registry.synced:
                conn.write_full(200, JSON_HEADER, b'{"ready":true}')
            else:
                conn.write_full(503, JSON_HEADER + self._retry_after, b'{"ready":false}')
        elif kind is RouteKind.METRICS:
            body = generate_latest(self.metrics.prometheus)
            conn.write_full(200, _METRICS_HEADER, body)
        elif kind is RouteKind.SERVER_METADATA:
            conn.write_full(200, JSON_HEADER, _METADATA)
        else:  # RouteKind.LIST_MODELS
            models = self.visible_models(req)
            conn.write_full(200, JSON_HEADER, orjson.dumps({"models": models}))

    def visible_models(self, req: Request) -> list[str]:
        names = sorted(self.registry.models)
        if self.auth is None:
            return names
        authz = _header(req, b"authorization")
        return [n for n in names if self.auth.allows(authz, n)]

    def error(
        self,
        conn: HttpConnection,
        status: int,
        message: str,
        retry_after: bool = False,
        **extra: object,
    ) -> None:
        headers = JSON_HEADER + self._retry_after if retry_after else JSON_HEADER
        if conn.request_id is not None:
            headers += b"x-request-id: " + conn.request_id + b"\r\n"
            if status >= 500:
                log.warning(
                    "%d %s", status, message, extra={"request_id": conn.request_id.decode()}
                )
        conn.write_full(status, headers, json_body(status, message, **extra))

    def deny(self, conn: HttpConnection, status: int, message: str) -> None:
        headers = JSON_HEADER
        if status == 401:
            headers += b'www-authenticate: Bearer realm="shoal"\r\n'
        conn.write_full(status, headers, json_body(status, message))


def _header(req: Request, name: bytes) -> bytes | None:
    for hname, value in req.headers:
        if hname == name:
            return value
    return None
