"""The runtime's ASGI app: raw routing (no framework on the hot path), the standard V1/V2 and
health routes, /metrics, and each model's own ingress app under `/{model_name}/...`.

Routes:
  GET  /v2/health/live, /v2/health/ready, /v2, /v2/models/{m}, /v2/models/{m}/ready
  POST /v2/models/{m}/infer                (also /v2/models/{m}/versions/{v}/...)
  POST /v1/models/{m}:predict    GET /v1/models/{m}    GET /v1/models
  GET  /metrics
  *    /{m}/...   -> model m's ingress app (FastAPI or any ASGI app), root_path="/{m}"
  *    /...       -> when exactly one model has an ingress: that app, for paths not taken above
"""

from __future__ import annotations

import importlib.metadata
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from shoal.runtime import handle as handle_mod
from shoal.runtime import routing
from shoal.runtime.context import current_request_id
from shoal.runtime.dataplane import DataPlane
from shoal.runtime.errors import (
    DeadlineExceeded,
    InvalidInput,
    MethodNotAllowed,
    ModelNotFound,
    PayloadTooLarge,
    ShoalError,
    echo,
    to_response,
)
from shoal.runtime.metrics import RuntimeMetrics
from shoal.runtime.model import ServedModel
from shoal.runtime.protocol import v1, v2
from shoal.runtime.protocol.encoding import dumps
from shoal.runtime.routing import Route, RouteKind

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_JSON = (b"content-type", b"application/json")
_TEXT = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
_OK_LIVE = dumps({"live": True})
_READY = dumps({"ready": True})
_NOT_READY = dumps({"ready": False})


class _ClientGone(Exception):
    pass


class _Request:
    """One HTTP request as the handlers see it: the ASGI triple and the headers they read."""

    __slots__ = ("header_len", "length", "receive", "rid", "scope", "send", "timeout_ms")

    def __init__(self, scope: Scope, receive: Receive, send: Send, rid: bytes | None) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.timeout_ms: bytes | None = None
        self.length: bytes | None = None
        self.header_len: bytes | None = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value
            elif key == b"x-shoal-timeout-ms":
                self.timeout_ms = value
            elif key == b"content-length":
                self.length = value
            elif key == b"inference-header-content-length":
                self.header_len = value
        self.rid: bytes = rid  # type: ignore[assignment]


Handler = Callable[[Route, _Request], Awaitable[int]]

# Requests of these routes are counted in shoal_requests_total and the latency histogram
# (probes, scrapes and server-wide listings are not: they would drown the model's numbers).
_COUNTED = frozenset(
    {
        RouteKind.V2_INFER,
        RouteKind.V2_MODEL_READY,
        RouteKind.V2_MODEL_METADATA,
        RouteKind.V1_PREDICT,
        RouteKind.V1_MODEL_STATUS,
        RouteKind.NO_ROUTE,
    }
)


class ShoalApp:
    """ASGI app. `on_startup`/`on_shutdown` run in the lifespan (the runtime loads models in a
    background task started there, so health answers while a big model loads)."""

    def __init__(
        self,
        plane: DataPlane,
        metrics: RuntimeMetrics,
        *,
        request_timeout_s: float = 30.0,
        max_timeout_ms: int = 600_000,
        max_body_bytes: int = 16 << 20,
        on_startup: Callable[[], Awaitable[None]] | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.plane = plane
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self.max_timeout_ms = max_timeout_ms
        self.max_body_bytes = max_body_bytes
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown
        self.metrics_port: int | None = None
        """The port that serves only /metrics (set once bound: ServeSettings.metrics_port)."""
        self._served = frozenset(plane.expected)
        self._server_metadata = v2.server_metadata(_version())
        self._rid_prefix = os.urandom(4).hex()
        self._rid_counter = itertools.count(1)
        self._handlers: dict[RouteKind, Handler] = {
            RouteKind.LIVE: self._live,
            RouteKind.READY: self._ready,
            RouteKind.METRICS: self._metrics,
            RouteKind.SERVER_METADATA: self._server,
            RouteKind.LIST_MODELS: self._list_models,
            RouteKind.V2_INFER: self._v2_infer,
            RouteKind.V2_MODEL_READY: self._v2_model_ready,
            RouteKind.V2_MODEL_METADATA: self._v2_model_metadata,
            RouteKind.V1_PREDICT: self._v1_predict,
            RouteKind.V1_MODEL_STATUS: self._v1_model_status,
            RouteKind.NO_ROUTE: self._no_route,
            RouteKind.INGRESS: self._ingress,
        }

    # -- ASGI entry -----------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self.metrics_port is not None and (scope.get("server") or ("", 0))[1] == (
                self.metrics_port
            ):
                await self._metrics_listener(scope, receive, send)
            else:
                await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.on_startup is not None:
                        await self.on_startup()
                except Exception as exc:
                    logger.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    if self.on_shutdown is not None:
                        await self.on_shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    # -- HTTP -----------------------------------------------------------------------------
    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        route = routing.route(scope["path"])
        if self.plane.draining:
            send = _closing(send)
        req = _Request(scope, receive, send, None)
        if req.rid is None:
            req.rid = f"{self._rid_prefix}-{next(self._rid_counter)}".encode()
        try:
            if route.method and scope["method"] != route.method:
                raise MethodNotAllowed(f"use {route.method} for {route.template}")
            status = await self._handlers[route.kind](route, req)
        except _ClientGone:
            return
        except Exception as exc:  # ShoalErrors and bugs alike: errors.to_response maps them
            status = await self._error(req, exc)
        if route.kind in _COUNTED:
            label = route.model if route.model in self._served else "unknown"
            self.metrics.observe_request(
                label, route.protocol, route.template, status, time.perf_counter() - start
            )

    async def _metrics_listener(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The metrics port: GET /metrics and nothing else (the port a NetworkPolicy may open
        to a Prometheus; inference stays behind the main port). Bodies are never read."""
        req = _Request(scope, receive, send, None)
        req.rid = req.rid or f"{self._rid_prefix}-{next(self._rid_counter)}".encode()
        if scope["path"] != "/metrics":
            exc: Exception = ModelNotFound(
                f"{scope['path']}: this is the metrics port; it serves /metrics only"
            )
        elif scope["method"] not in ("GET", "HEAD"):
            exc = MethodNotAllowed("use GET for /metrics")
        else:
            await self._metrics(routing.route("/metrics"), req)
            return
        await self._error(req, exc)

    # -- server-wide routes ----------------------------------------------------------------
    async def _live(self, route: Route, req: _Request) -> int:
        await _respond(req.send, 200, _OK_LIVE, req.rid)
        return 200

    async def _ready(self, route: Route, req: _Request) -> int:
        ok = self.plane.ready()
        status = 200 if ok else 503
        await _respond(req.send, status, _READY if ok else _NOT_READY, req.rid)
        return status

    async def _metrics(self, route: Route, req: _Request) -> int:
        await _respond(req.send, 200, self.metrics.render(), req.rid, _TEXT)
        return 200

    async def _server(self, route: Route, req: _Request) -> int:
        await _respond(req.send, 200, self._server_metadata, req.rid)
        return 200

    async def _list_models(self, route: Route, req: _Request) -> int:
        await _respond(req.send, 200, dumps({"models": self.plane.expected}), req.rid)
        return 200

    async def _no_route(self, route: Route, req: _Request) -> int:
        raise ModelNotFound(_no_route_message(req.scope))

    # -- OIP V2 ----------------------------------------------------------------------------
    async def _v2_infer(self, route: Route, req: _Request) -> int:
        name = route.model
        body = await self._body(req)
        model = self.plane.model(name)
        json_len = _int_header(req.header_len, "inference-header-content-length")
        parsed = v2.parse_infer(body, json_len, model.inputs_by_name)
        deadline = self._deadline(model, req.timeout_ms)
        results = await self._infer(model, parsed.rows, deadline, req.receive, req.rid)
        out, out_json_len = v2.encode_infer(name, parsed, results, model.default_output)
        if out_json_len is None:
            await _respond(req.send, 200, out, req.rid)
        else:
            await _respond(
                req.send,
                200,
                out,
                req.rid,
                (b"content-type", b"application/octet-stream"),
                (b"inference-header-content-length", str(out_json_len).encode()),
            )
        return 200

    async def _v2_model_ready(self, route: Route, req: _Request) -> int:
        ok = self.plane.model_ready(route.model)
        status = 200 if ok else 503
        await _respond(req.send, status, dumps({"name": route.model, "ready": ok}), req.rid)
        return status

    async def _v2_model_metadata(self, route: Route, req: _Request) -> int:
        model = self.plane.model(route.model)
        body = v2.model_metadata(route.model, model.inputs, model.outputs)
        await _respond(req.send, 200, body, req.rid)
        return 200

    # -- KServe V1 -------------------------------------------------------------------------
    async def _v1_predict(self, route: Route, req: _Request) -> int:
        body = await self._body(req)
        model = self.plane.model(route.model)
        rows = v1.parse_predict(body)
        deadline = self._deadline(model, req.timeout_ms)
        results = await self._infer(model, rows, deadline, req.receive, req.rid)
        await _respond(req.send, 200, v1.encode_predict(results), req.rid)
        return 200

    async def _v1_model_status(self, route: Route, req: _Request) -> int:
        ok = self.plane.model_ready(route.model)
        await _respond(req.send, 200, v1.model_status(route.model, ok), req.rid)
        return 200

    # -- shared steps ----------------------------------------------------------------------
    async def _infer(
        self, model: ServedModel, rows: list[Any], deadline: float, receive: Receive, rid: bytes
    ) -> list[Any]:
        handle_mod.current_deadline.set(deadline)
        current_request_id.set(rid)  # the batch queue logs a failed row with its request id
        return await self.plane.infer(model.name, rows, deadline, _disconnected(receive))

    def _deadline(self, model: ServedModel, timeout_ms: bytes | None) -> float:
        if timeout_ms is None:
            budget = self.request_timeout_s
        else:
            budget = parse_timeout_ms(timeout_ms, self.max_timeout_ms) / 1000.0
        return model.clock.time() + budget

    async def _body(self, req: _Request) -> bytes:
        limit = self.max_body_bytes
        n = _int_header(req.length, "content-length")
        if n is not None and n > limit:
            raise PayloadTooLarge(f"request body of {n} bytes exceeds the limit of {limit}")
        receive = req.receive
        message = await receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body"):
            if message["type"] == "http.disconnect":
                raise _ClientGone
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body"):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _error(self, req: _Request, exc: BaseException) -> int:
        rid = req.rid.decode(errors="replace")
        status, headers, body = to_response(exc, rid)
        level = logging.WARNING if status >= 500 else logging.DEBUG
        if logger.isEnabledFor(level):
            logger.log(
                level, "%d %s", status, body.decode(errors="replace"), extra={"request_id": rid}
            )
        try:
            await _respond(req.send, status, body, req.rid, *headers)
        except Exception:  # the client is gone or the response had started: nothing to answer
            logger.debug("could not send error response", exc_info=True)
        return status

    # -- model ingress apps ---------------------------------------------------------------
    async def _ingress(self, route: Route, req: _Request) -> int:
        """A model's own app: `/{m}/...` for model m's app, any other path for the one app
        when exactly one model has an app. Counted here, with the app's route template."""
        start = time.perf_counter()
        scope = req.scope
        path: str = scope["path"]
        name = path[1:].partition("/")[0]
        model = self.plane.models.get(name)
        prefix = ""
        if model is not None and model.ingress is not None:
            prefix = "/" + name
        else:
            apps = [m for m in self.plane.models.values() if m.ingress is not None]
            model = apps[0] if len(apps) == 1 else None
        if model is None or model.ingress is None:
            if name in self._served and name not in self.plane.models:
                raise _Loading(name)
            raise ModelNotFound(_no_route_message(scope))
        self.plane.admit()
        sub_scope = dict(scope)
        if prefix:
            sub_scope["root_path"] = scope.get("root_path", "") + prefix
        sent = _StatusRecorder(req.send)
        try:
            await model.ingress(sub_scope, req.receive, sent)
        finally:
            self.plane.release()
            self.metrics.observe_request(
                model.name,
                "ingress",
                prefix + _route_template(sub_scope),
                sent.status,
                time.perf_counter() - start,
            )
        return sent.status


class _Loading(ShoalError):
    status = 503

    def __init__(self, name: str) -> None:
        super().__init__(f"model {name!r} is loading", [(b"retry-after", b"1")])


def _disconnected(receive: Receive) -> Callable[[], bool] | None:
    """A zero-cost "did the client go away?" for uvicorn's protocols: their `receive` is a
    method of the request cycle, whose `disconnected` flag the connection sets when it is lost.
    (Awaiting `receive()` would need a watcher task per request on the hot path.) Queued rows of
    a gone client are dropped when a batch is formed. Other servers: None, no dropping."""
    cycle = getattr(receive, "__self__", None)
    if cycle is None or not hasattr(cycle, "disconnected"):
        return None
    return lambda: bool(cycle.disconnected)


def _closing(send: Send) -> Send:
    """While draining, close each connection after its response so no client reuses a
    keep-alive connection that is about to go away."""

    async def wrapped(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message["headers"], (b"connection", b"close")]}
        await send(message)

    return wrapped


def _int_header(value: bytes | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"{name} header must be an integer") from None


async def _respond(
    send: Send, status: int, body: bytes, rid: bytes, *headers: tuple[bytes, bytes]
) -> None:
    # content-length: without it uvicorn frames the body chunked, in several writes (syscalls).
    length = (b"content-length", str(len(body)).encode())
    if headers:
        hdrs = [(b"x-request-id", rid), length, *headers]
        if not any(k == b"content-type" for k, _ in headers):
            hdrs.append(_JSON)
    else:
        hdrs = [_JSON, (b"x-request-id", rid), length]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


class _StatusRecorder:
    """An ASGI `send` that remembers the status the app answered (for the metrics)."""

    __slots__ = ("_send", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 500  # an app that raises before answering gets our 500

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        await self._send(message)


def _route_template(scope: Scope) -> str:
    """The app's route template (FastAPI and Starlette put the matched route in the scope);
    never the raw path, which would give every distinct URL its own metric series."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "/{unmatched}"


def _no_route_message(scope: Scope) -> str:
    return f"no route {echo(scope['method'])} {echo(scope['path'])}"


def parse_timeout_ms(value: bytes, limit: int) -> int:
    """`x-shoal-timeout-ms`: the caller's remaining budget, an integer of milliseconds in
    1..limit. 0 means the budget is spent (504); anything else (inf, 1e20, -5, 1.5) is a 400,
    never a way to lift the deadline."""
    if value.isdigit() and len(value) <= len(str(limit)):
        ms = int(value)
        if ms == 0:
            raise DeadlineExceeded("deadline exceeded before the request was queued")
        if ms <= limit:
            return ms
    raise InvalidInput(
        f"x-shoal-timeout-ms must be an integer of milliseconds in 1..{limit}, "
        f"got {echo(value.decode(errors='replace'))!r}"
    )


def _version() -> str:
    try:
        return importlib.metadata.version("shoal")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "0+unknown"
