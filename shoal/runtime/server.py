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

import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from shoal.runtime import handle as handle_mod
from shoal.runtime.dataplane import DataPlane
from shoal.runtime.errors import (
    DeadlineExceeded,
    InvalidInput,
    MethodNotAllowed,
    ModelNotFound,
    PayloadTooLarge,
    ShoalError,
    to_response,
)
from shoal.runtime.metrics import RuntimeMetrics
from shoal.runtime.model import ServedModel
from shoal.runtime.protocol import v1, v2
from shoal.runtime.protocol.encoding import dumps

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON = (b"content-type", b"application/json")
_TEXT = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
_OK_LIVE = dumps({"live": True})
_READY = dumps({"ready": True})
_NOT_READY = dumps({"ready": False})
VERSION = "0.1.0"


class _ClientGone(Exception):
    pass


class ShoalApp:
    """ASGI app. `on_startup`/`on_shutdown` run in the lifespan (the runtime loads models in a
    background task started there, so health answers while a big model loads)."""

    def __init__(
        self,
        plane: DataPlane,
        metrics: RuntimeMetrics,
        *,
        request_timeout_s: float = 30.0,
        max_body_bytes: int = 16 << 20,
        on_startup: Callable[[], Awaitable[None]] | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plane = plane
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self.max_body_bytes = max_body_bytes
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown
        self._rid_prefix = os.urandom(4).hex()
        self._rid_counter = itertools.count(1)

    # -- ASGI entry -----------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
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
        path: str = scope["path"]
        method: str = scope["method"]
        rid: bytes | None = None
        timeout_ms: bytes | None = None
        length: bytes | None = None
        header_len: bytes | None = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value
            elif key == b"x-shoal-timeout-ms":
                timeout_ms = value
            elif key == b"content-length":
                length = value
            elif key == b"inference-header-content-length":
                header_len = value
        if rid is None:
            rid = f"{self._rid_prefix}-{next(self._rid_counter)}".encode()
        if self.plane.draining:
            send = _closing(send)
        model_name = "unknown"
        protocol = "other"
        try:
            if path.startswith("/v2/models/"):
                protocol = "v2"
                rest = path[11:]
                name, _, tail = rest.partition("/")
                if tail.startswith("versions/"):
                    tail = tail[9:].partition("/")[2]
                if tail == "infer":
                    model_name = self._model_label(name)
                    if method != "POST":
                        raise MethodNotAllowed("use POST for infer")
                    await self._v2_infer(name, receive, send, rid, length, header_len, timeout_ms)
                    status = 200
                elif tail == "ready":
                    ok = self.plane.model_ready(name)
                    status = 200 if ok else 503
                    await _respond(send, status, dumps({"name": name, "ready": ok}), rid)
                elif tail == "":
                    model = self.plane.model(name)
                    status = 200
                    await _respond(
                        send, 200, v2.model_metadata(name, model.inputs, model.outputs), rid
                    )
                else:
                    raise ModelNotFound(f"no route {method} {path}")
            elif path.startswith("/v1/models/"):
                protocol = "v1"
                rest = path[11:]
                if rest.endswith(":predict"):
                    name = rest[:-8]
                    model_name = self._model_label(name)
                    if method != "POST":
                        raise MethodNotAllowed("use POST for :predict")
                    body = await self._body(receive, length)
                    model = self.plane.model(name)
                    rows = v1.parse_predict(body)
                    deadline = self._deadline(model, timeout_ms)
                    results = await self._infer(model, rows, deadline, receive)
                    await _respond(send, 200, v1.encode_predict(results), rid)
                    status = 200
                else:
                    ok = self.plane.model_ready(rest)
                    status = 200
                    await _respond(send, 200, v1.model_status(rest, ok), rid)
            elif path == "/v1/models" or path == "/v1/models/":
                await _respond(send, 200, dumps({"models": self.plane.expected}), rid)
                return
            elif path == "/metrics":
                await _respond(send, 200, self.metrics.render(), rid, _TEXT)
                return
            elif path == "/v2/health/live":
                await _respond(send, 200, _OK_LIVE, rid)
                return
            elif path == "/v2/health/ready":
                ok = self.plane.ready()
                await _respond(send, 200 if ok else 503, _READY if ok else _NOT_READY, rid)
                return
            elif path == "/v2" or path == "/v2/":
                await _respond(send, 200, v2.server_metadata(VERSION), rid)
                return
            else:
                await self._ingress(scope, receive, send, rid)
                return
        except _ClientGone:
            return
        except ShoalError as exc:
            status = await self._error(send, exc, rid)
        except Exception as exc:
            status = await self._error(send, exc, rid)
        self.metrics.observe_request(model_name, protocol, status, time.perf_counter() - start)

    async def _v2_infer(
        self,
        name: str,
        receive: Receive,
        send: Send,
        rid: bytes,
        length: bytes | None,
        header_len: bytes | None,
        timeout_ms: bytes | None,
    ) -> None:
        body = await self._body(receive, length)
        model = self.plane.model(name)
        json_len = _int_header(header_len, "inference-header-content-length")
        req = v2.parse_infer(body, json_len, model.inputs_by_name)
        deadline = self._deadline(model, timeout_ms)
        results = await self._infer(model, req.rows, deadline, receive)
        out, out_json_len = v2.encode_infer(name, req, results, model.default_output)
        if out_json_len is None:
            await _respond(send, 200, out, rid)
        else:
            await _respond(
                send,
                200,
                out,
                rid,
                (b"content-type", b"application/octet-stream"),
                (b"inference-header-content-length", str(out_json_len).encode()),
            )

    def _model_label(self, name: str) -> str:
        # Only names we serve become label values: a scan of random names must not grow /metrics.
        return name if name in self.plane.expected else "unknown"

    async def _infer(
        self, model: ServedModel, rows: list[Any], deadline: float, receive: Receive
    ) -> list[Any]:
        handle_mod.current_deadline.set(deadline)
        return await self.plane.infer(model.name, rows, deadline, _disconnected(receive))

    def _deadline(self, model: ServedModel, timeout_ms: bytes | None) -> float:
        if timeout_ms is None:
            budget = self.request_timeout_s
        else:
            try:
                budget = float(timeout_ms) / 1000.0
            except ValueError:
                got = timeout_ms.decode(errors="replace")
                raise InvalidInput(
                    f"x-shoal-timeout-ms must be a number of milliseconds, got {got!r}"
                ) from None
            if not budget > 0:
                raise DeadlineExceeded("deadline exceeded before the request was queued")
        return model.clock.time() + budget

    async def _body(self, receive: Receive, length: bytes | None) -> bytes:
        limit = self.max_body_bytes
        if length is not None:
            n = _int_header(length, "content-length")
            if n is not None and n > limit:
                raise PayloadTooLarge(f"request body of {n} bytes exceeds the limit of {limit}")
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

    async def _error(self, send: Send, exc: BaseException, rid: bytes) -> int:
        status, headers, body = to_response(exc, rid.decode(errors="replace"))
        if status >= 500 and logger.isEnabledFor(logging.WARNING):
            logger.warning(
                "%d %s",
                status,
                body.decode(errors="replace"),
                extra={"request_id": rid.decode(errors="replace")},
            )
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%d %s",
                status,
                body.decode(errors="replace"),
                extra={"request_id": rid.decode(errors="replace")},
            )
        try:
            await _respond(send, status, body, rid, *headers)
        except Exception:  # the client is gone or the response had started: nothing to answer
            logger.debug("could not send error response", exc_info=True)
        return status

    # -- model ingress apps ---------------------------------------------------------------
    async def _ingress(self, scope: Scope, receive: Receive, send: Send, rid: bytes) -> None:
        path: str = scope["path"]
        name, _, _ = path[1:].partition("/")
        model = self.plane.models.get(name)
        prefix = ""
        if model is not None and model.ingress is not None:
            prefix = "/" + name
        else:
            apps = [m for m in self.plane.models.values() if m.ingress is not None]
            model = apps[0] if len(apps) == 1 else None
        if model is None or model.ingress is None:
            if name in self.plane.expected and name not in self.plane.models:
                await self._error(send, _Loading(name), rid)
                return
            await self._error(send, ModelNotFound(f"no route {scope['method']} {path}"), rid)
            return
        try:
            self.plane.admit()
        except ShoalError as exc:
            await self._error(send, exc, rid)
            return
        try:
            sub_scope = dict(scope)
            if prefix:
                sub_scope["root_path"] = scope.get("root_path", "") + prefix
            await model.ingress(sub_scope, receive, send)
        finally:
            self.plane.release()


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

    async def wrapped(message: dict[str, Any]) -> None:
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
