"""The request path: route, authorize, choose a replica, forward, retry, hold at zero.

Deadlines: a request carries `x-shoal-timeout-ms` (relative) or gets the default; the replica
receives the REMAINING budget in the same header, so its queue time counts against it.
Retries: on another replica, only before any response byte reached the client (the body is
always fully buffered), within the deadline, `max_attempts` and the model's retry budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import random
from collections.abc import Callable

from shoal.gateway.answers import Answers
from shoal.gateway.auth import Authenticator
from shoal.gateway.balancer import pick
from shoal.gateway.hold import HoldFull
from shoal.gateway.httpserver import HttpConnection
from shoal.gateway.metrics import GatewayMetrics
from shoal.gateway.registry import Model, Registry, Replica
from shoal.gateway.routing import Route, RouteKind, route
from shoal.gateway.settings import GatewaySettings
from shoal.gateway.upstream import (
    HOP_BY_HOP,
    BrokenResponse,
    ConnectError,
    ResetBeforeResponse,
    UpstreamConnection,
    UpstreamError,
)
from shoal.gateway.wire import Request

log = logging.getLogger(__name__)

TIMEOUT_HEADER = b"x-shoal-timeout-ms"
_MODEL_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})
_ROUTE_CACHE_SIZE = 4096
# Request headers the gateway does not forward as-is (it sets its own framing, host, deadline).
_NOT_FORWARDED = HOP_BY_HOP | {b"host", b"expect", TIMEOUT_HEADER}


class _Outcome(enum.Enum):
    DONE = "done"
    CONNECT = "connect"
    RESET = "reset"
    DRAINING = "draining"
    SATURATED = "saturated"
    """503 + Retry-After without draining: the replica's queue is full or it is still loading."""


class Gateway:
    def __init__(
        self,
        settings: GatewaySettings,
        registry: Registry,
        metrics: GatewayMetrics,
        auth: Authenticator | None = None,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.auth = auth
        self._clock = clock or asyncio.get_running_loop().time
        self._rng = rng or random.Random()
        self.answers = Answers(registry, metrics, auth, settings.retry_after_s)
        self._rid_prefix = b"gw%08x" % self._rng.getrandbits(32)
        self._rid_counter = itertools.count(1)
        self._routes: dict[str, Route] = {}

    # -- entry point --------------------------------------------------------------------------

    async def handle(self, req: Request, conn: HttpConnection) -> None:
        r = self._routes.get(req.path)
        if r is None:
            r = route(req.path)
            if len(self._routes) < _ROUTE_CACHE_SIZE:  # custom paths may be unbounded
                self._routes[req.path] = r
        if r.kind is RouteKind.MODEL:
            await self._model_request(req, conn, r.model)
            return
        self.answers.gateway_route(req, conn, r.kind)

    # -- model requests -----------------------------------------------------------------------

    async def _model_request(self, req: Request, conn: HttpConnection, name: str) -> None:
        if req.method not in _MODEL_METHODS:
            self.answers.error(conn, 405, f"method {req.method.decode()} not allowed")
            return
        # One pass over the headers: pick out ours, encode the rest for the replica.
        timeout_raw: bytes | None = None
        authorization: bytes | None = None
        forwarded = bytearray()
        for hname, value in req.headers:
            if hname in _NOT_FORWARDED:
                if hname == TIMEOUT_HEADER:
                    timeout_raw = value
                continue
            if hname == b"authorization":
                authorization = value
            elif hname == b"x-request-id":
                conn.request_id = value
            forwarded += hname + b": " + value + b"\r\n"
        if conn.request_id is None:
            # The replica adopts it (and echoes it back), so its logs and ours line up.
            conn.request_id = b"%b-%d" % (self._rid_prefix, next(self._rid_counter))
            forwarded += b"x-request-id: " + conn.request_id + b"\r\n"
        if self.auth is not None:
            denial = self.auth.check(authorization, name)
            if denial is not None:
                self.answers.deny(conn, denial.status, denial.message)
                return
        model = self.registry.models.get(name)
        if model is None:
            self.answers.error(
                conn, 404, f"unknown model {name!r}", known_models=self.answers.visible_models(req)
            )
            return
        if timeout_raw is None:
            timeout_ms = self.settings.default_timeout_ms
        else:
            try:
                timeout_ms = int(timeout_raw)
            except ValueError:
                timeout_ms = 0
            if not 0 < timeout_ms <= self.settings.max_timeout_ms:
                self.answers.error(
                    conn,
                    400,
                    f"x-shoal-timeout-ms must be an integer in 1..{self.settings.max_timeout_ms}",
                )
                return
        target = req.path.encode("latin-1")
        if req.query:
            target += b"?" + req.query
        prefix = b"%b %b HTTP/1.1\r\n%b" % (req.method, target, bytes(forwarded))
        suffix = b"content-length: %d\r\n" % len(req.body) if req.body else b""
        try:
            await self._forward(
                req, conn, model, prefix, suffix, req.received_at + timeout_ms / 1e3
            )
        finally:
            # 499: the client went away before an answer (nginx's convention).
            code = conn.status or 499
            self.metrics.observe(name, code, self._clock() - req.received_at)

    async def _forward(
        self,
        req: Request,
        conn: HttpConnection,
        model: Model,
        prefix: bytes,
        suffix: bytes,
        deadline: float,
    ) -> None:
        model.budget.record_request()
        tried: list[Replica] = []
        attempts = 0
        busy_waits = 0
        last_failure: _Outcome | None = None
        draining_response: tuple[int, bytes, bytes] | None = None
        while True:
            now = self._clock()
            replica = pick(model.replicas, self._rng, now, tried)
            if replica is None:
                # Hold when the model has no replica at all (scale from zero) or its last one
                # is draining (a rolling update: a new one is on its way). Not after refused
                # connections: nothing says another replica is coming.
                may_hold = not tried or last_failure is _Outcome.DRAINING
                if not (may_hold and model.holdable and model.hold.limit > 0):
                    break
                try:
                    released = await model.hold.wait(deadline - now)
                except HoldFull:
                    self.answers.error(
                        conn,
                        503,
                        f"model {model.name!r} has no ready replica and "
                        f"{model.hold.limit} requests are already waiting for one",
                        retry_after=True,
                    )
                    return
                if not released:
                    self.answers.error(
                        conn,
                        504,
                        f"deadline passed while waiting for a ready replica of {model.name!r}",
                    )
                    return
                continue
            attempts += 1
            outcome = await self._attempt(req, conn, model, replica, prefix, suffix, deadline)
            if isinstance(outcome, tuple):
                kind, saved = outcome
                if kind is _Outcome.SATURATED:
                    # Busy, not broken: wait here (bounded, within the deadline) until a
                    # replica of this model finishes a request, the replica set changes, or a
                    # short recheck interval passes; then choose again. Not a retry: no
                    # budget spent, nobody excluded.
                    busy_waits += 1
                    if await self._wait_for_room(model, deadline, busy_waits):
                        attempts -= 1
                        self.metrics.retried(model.name, _Outcome.SATURATED.value)
                        continue
                    if self._clock() >= deadline:
                        self.answers.error(
                            conn, 504, "deadline passed while every replica was busy"
                        )
                    else:
                        conn.write_full(*saved)
                    return
                draining_response = saved
                last_failure = _Outcome.DRAINING
            elif outcome is _Outcome.DONE:
                return
            else:
                last_failure = outcome
            tried.append(replica)
            if (
                attempts >= self.settings.retry.max_attempts
                or self._clock() >= deadline
                or not model.budget.try_spend()
            ):
                break
            self.metrics.retried(model.name, last_failure.value)
        # Out of options: report the last failure.
        if draining_response is not None and last_failure is _Outcome.DRAINING:
            status, headers, body = draining_response
            conn.write_full(status, headers, body)
        elif last_failure is None:
            self.answers.error(
                conn, 503, f"model {model.name!r} has no ready replica", retry_after=True
            )
        else:
            why = "refused the connection" if last_failure is _Outcome.CONNECT else "reset it"
            self.answers.error(conn, 502, f"replica of {model.name!r} {why}", retry_after=True)

    async def _wait_for_room(self, model: Model, deadline: float, waits: int) -> bool:
        """Hold a request a saturated replica refused; False: answer with that refusal.

        Completions on the model wake held requests one for one; the timer (doubling per
        wait, up to 1 s) only covers refusals no completion here will answer (a replica still
        loading, or one kept busy by another gateway), so resends never swamp a busy replica.
        """
        if not (model.holdable and model.hold.limit > 0):
            return False
        remaining = deadline - self._clock()
        if remaining <= 0:
            return False
        try:
            backoff = self.settings.retry.saturated_recheck_s * (1 << min(waits - 1, 10))
            await model.hold.wait(min(remaining, backoff, 1.0))
        except HoldFull:
            return False
        return self._clock() < deadline

    async def _attempt(
        self,
        req: Request,
        conn: HttpConnection,
        model: Model,
        replica: Replica,
        prefix: bytes,
        suffix: bytes,
        deadline: float,
    ) -> _Outcome | tuple[_Outcome, tuple[int, bytes, bytes]]:
        """One try on one replica. DONE when a response (or a final error) went to the client."""
        replica.outstanding += 1
        up: UpstreamConnection | None = None
        try:
            try:
                async with asyncio.timeout(deadline - self._clock()):
                    up = await replica.pool.acquire()
                    remaining_ms = max(1, int((deadline - self._clock()) * 1000))
                    up.send(
                        b"%bhost: %b\r\n%bx-shoal-timeout-ms: %d\r\n\r\n%b"
                        % (prefix, replica.pool.host_header, suffix, remaining_ms, req.body),
                        req.method == b"HEAD",
                    )
                    await up.wait_head()
            except TimeoutError:
                if up is not None:
                    up.abort()
                self.answers.error(conn, 504, "deadline passed before the replica answered")
                return _Outcome.DONE
            except ConnectError as exc:
                replica.eject(self._clock(), self.settings.retry.eject_s)
                log.warning("%s", exc)
                return _Outcome.CONNECT
            except ResetBeforeResponse:
                assert up is not None
                up.abort()
                return _Outcome.RESET
            except BrokenResponse as exc:
                assert up is not None
                up.abort()
                self.answers.error(conn, 502, f"bad response from replica: {exc}")
                return _Outcome.DONE
            except BaseException:
                if up is not None:
                    up.abort()
                raise
            replica.succeeded()
            if up.status == 503 and (up.draining or up.retry_after):
                if up.draining:
                    replica.mark_draining(self._clock(), self.settings.retry.drain_eject_s)
                kind = _Outcome.DRAINING if up.draining else _Outcome.SATURATED
                body = b""
                if not up.complete:
                    # A short error body written after its head: wait for its first piece.
                    with contextlib.suppress(UpstreamError):
                        body = await up.next_chunk() or b""
                if up.complete:
                    body += up.take_body()
                    up.finish()
                else:
                    up.abort()
                return (kind, (up.status, bytes(up.header_block), body))
            await self._relay(conn, up)
            return _Outcome.DONE
        finally:
            replica.outstanding -= 1
            if len(model.hold):
                model.hold.release_one()

    async def _relay(self, conn: HttpConnection, up: UpstreamConnection) -> None:
        if up.complete:
            conn.write_full(up.status, up.header_block, up.take_body(), up.content_length or 0)
            up.finish()
            return
        first: bytes | None = None
        try:
            # The head came without its body (servers often write them separately). Unless it
            # is an event stream, wait for the first piece: if that completes the body, the
            # client gets one write with a content-length; else stream from here, holding
            # nothing back.
            if not up.event_stream:
                first = await up.next_chunk()
        except UpstreamError as exc:
            up.abort()
            self.answers.error(conn, 502, f"bad response from replica: {exc}")
            return
        except BaseException:
            up.abort()
            raise
        if up.complete:
            conn.write_full(up.status, up.header_block, first or b"", up.content_length or 0)
            up.finish()
            return
        conn.start_stream(up.status, up.header_block, up.content_length)
        try:
            if first:
                await conn.write_chunk(first)
            while (chunk := await up.next_chunk()) is not None:
                await conn.write_chunk(chunk)
        except UpstreamError:
            up.abort()
            conn.abort()
            return
        except BaseException:
            up.abort()
            raise
        up.finish()
        conn.end_stream()
