"""The request path after admission: choose a replica, forward, retry, hold at zero.

Deadlines: a request carries `x-shoal-timeout-ms` (relative) or gets the default; the replica
receives the REMAINING budget in the same header, so its queue time counts against it.
Retries: on another replica, only before any response byte reached the client (the body is
always fully buffered), within the deadline, `max_attempts` and the model's retry budget.
Failures the gateway answers itself are raised as GatewayError and rendered by the cycle.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import random
from dataclasses import dataclass

from shoal.gateway.admission import Admission, ModelAdmission, RequestIds
from shoal.gateway.answers import Answers
from shoal.gateway.auth import Authenticator
from shoal.gateway.balancer import pick
from shoal.gateway.clock import Clock, LoopClock
from shoal.gateway.cycle import ResponseCycle
from shoal.gateway.errors import (
    BadGateway,
    GatewayError,
    GatewayTimeout,
    NotFound,
    Overloaded,
    Unavailable,
)
from shoal.gateway.hold import HoldFull
from shoal.gateway.metrics import GatewayMetrics
from shoal.gateway.registry import Model, Registry, Replica
from shoal.gateway.routing import Route
from shoal.gateway.settings import GatewaySettings
from shoal.gateway.upstream import (
    BrokenResponse,
    ConnectError,
    DescriptorsExhausted,
    ResetBeforeResponse,
    UpstreamConnection,
    UpstreamError,
)
from shoal.gateway.wire import Request

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    """How one try on one replica ended (the value is the retry metric's reason label)."""

    DONE = "done"
    """A response (the replica's, or the gateway's final error) went to the client."""
    CONNECT_FAILED = "connect"
    RESET = "reset"
    """The replica closed the connection before any response byte."""
    DRAINING = "draining"
    SATURATED = "saturated"
    """503 + Retry-After without draining: the replica's queue is full or it is still loading."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A replica's own 503, kept to pass on if no other replica takes the request."""

    status: int
    headers: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class Attempt:
    outcome: Outcome
    refusal: Refusal | None = None


_DONE = Attempt(Outcome.DONE)
_CONNECT_FAILED = Attempt(Outcome.CONNECT_FAILED)
_RESET = Attempt(Outcome.RESET)


class Gateway:
    """The HTTP front end's handler: `admit` on the head, `handle` once the body is in."""

    def __init__(
        self,
        settings: GatewaySettings,
        registry: Registry,
        metrics: GatewayMetrics,
        auth: Authenticator | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.auth = auth
        self._clock = clock or LoopClock()
        self._rng = rng or random.Random()
        self.admission = Admission(settings, registry, auth, RequestIds(self._rng.getrandbits(32)))
        self.admit = self.admission.admit
        self.answers = Answers(registry, metrics, self.admission)

    # -- entry point --------------------------------------------------------------------------

    async def handle(self, req: Request, cycle: ResponseCycle) -> None:
        admitted = req.admitted
        if isinstance(admitted, Route):
            self.answers.gateway_route(req, cycle, admitted.kind)
            return
        assert isinstance(admitted, ModelAdmission)
        model = self.registry.models.get(admitted.model)
        if model is None:  # removed while the body arrived
            cycle.error(NotFound(f"unknown model {admitted.model!r}"))
            return
        suffix = b"content-length: %d\r\n" % len(req.body) if req.body else b""
        deadline = req.received_at + admitted.timeout_ms / 1e3
        try:
            await self._forward(req, cycle, model, admitted.prefix + suffix, deadline)
        except GatewayError as exc:
            cycle.error(exc)
        finally:
            # 499: the client went away before an answer (nginx's convention).
            code = cycle.status or 499
            self.metrics.observe(model.name, code, self._clock.time() - req.received_at)

    # -- forwarding, in named steps -----------------------------------------------------------

    async def _forward(
        self,
        req: Request,
        cycle: ResponseCycle,
        model: Model,
        head: bytes,
        deadline: float,
    ) -> None:
        model.budget.record_request()
        tried: list[Replica] = []
        attempts = 0
        busy_waits = 0
        last: Attempt | None = None
        while True:
            now = self._clock.time()
            replica = pick(model.replicas, self._rng, now, tried)
            if replica is None:
                # Hold when the model has no replica at all (scale from zero) or its last one
                # is draining (a rolling update: a new one is on its way). Not after refused
                # connections: nothing says another replica is coming.
                may_hold = last is None or last.outcome is Outcome.DRAINING
                if not (may_hold and model.holdable and model.hold.limit > 0):
                    break
                await self._hold_for_replica(model, deadline - now)
                continue
            attempts += 1
            result = await self._attempt(req, cycle, model, replica, head, deadline)
            if result is _DONE:
                return
            if result.outcome is Outcome.SATURATED:
                # Busy, not broken: wait here (bounded, within the deadline) until a replica
                # of this model finishes a request, the replica set changes, or a short
                # recheck interval passes; then choose again. Not a retry: no budget spent,
                # nobody excluded.
                busy_waits += 1
                if await self._wait_for_room(model, deadline, busy_waits):
                    attempts -= 1
                    self.metrics.retried(model.name, Outcome.SATURATED.value)
                    continue
                self._answer_saturated(cycle, result, deadline)
                return
            last = result
            tried.append(replica)
            if (
                attempts >= self.settings.retry.max_attempts
                or self._clock.time() >= deadline
                or not model.budget.try_spend()
            ):
                break
            self.metrics.retried(model.name, result.outcome.value)
        self._final_answer(cycle, model, last)

    async def _hold_for_replica(self, model: Model, remaining_s: float) -> None:
        """Wait for the model's replica set to change; raise when the hold is full or the
        deadline passes first."""
        try:
            released = await model.hold.wait(remaining_s)
        except HoldFull:
            raise Unavailable(
                f"model {model.name!r} has no ready replica and "
                f"{model.hold.limit} requests are already waiting for one"
            ) from None
        if not released:
            raise GatewayTimeout(
                f"deadline passed while waiting for a ready replica of {model.name!r}"
            )

    async def _wait_for_room(self, model: Model, deadline: float, waits: int) -> bool:
        """Hold a request a saturated replica refused; False: answer with that refusal.

        Completions on the model wake held requests one for one; the timer (doubling per
        wait, up to 1 s) only covers refusals no completion here will answer (a replica still
        loading, or one kept busy by another gateway), so resends never swamp a busy replica.
        """
        if not (model.holdable and model.hold.limit > 0):
            return False
        remaining = deadline - self._clock.time()
        if remaining <= 0:
            return False
        try:
            backoff = self.settings.retry.saturated_recheck_s * (1 << min(waits - 1, 10))
            await model.hold.wait(min(remaining, backoff, 1.0))
        except HoldFull:
            return False
        return self._clock.time() < deadline

    def _answer_saturated(self, cycle: ResponseCycle, result: Attempt, deadline: float) -> None:
        if self._clock.time() >= deadline:
            raise GatewayTimeout("deadline passed while every replica was busy")
        assert result.refusal is not None
        cycle.write_full(result.refusal.status, result.refusal.headers, result.refusal.body)

    def _final_answer(self, cycle: ResponseCycle, model: Model, last: Attempt | None) -> None:
        """Out of options: report the last failure."""
        if last is None:
            raise Unavailable(f"model {model.name!r} has no ready replica")
        if last.refusal is not None:  # the last replica was draining: its own answer
            cycle.write_full(last.refusal.status, last.refusal.headers, last.refusal.body)
            return
        why = "refused the connection" if last.outcome is Outcome.CONNECT_FAILED else "reset it"
        raise BadGateway(f"replica of {model.name!r} {why}", retry_after=True)

    # -- one try on one replica ---------------------------------------------------------------

    async def _attempt(
        self,
        req: Request,
        cycle: ResponseCycle,
        model: Model,
        replica: Replica,
        head: bytes,
        deadline: float,
    ) -> Attempt:
        """One try on one replica: DONE when its response went to the client; raises the
        gateway's own final answers (deadline, a broken response, out of descriptors)."""
        replica.outstanding += 1
        up: UpstreamConnection | None = None
        try:
            try:
                async with self._clock.timeout_at(deadline):
                    up = await replica.pool.acquire()
                    remaining_ms = max(1, round((deadline - self._clock.time()) * 1000))
                    up.send(
                        b"%bhost: %b\r\nx-shoal-timeout-ms: %d\r\n\r\n%b"
                        % (head, replica.pool.host_header, remaining_ms, req.body),
                        req.method == b"HEAD",
                    )
                    await up.wait_head()
            except TimeoutError:
                if up is not None:
                    up.abort()
                raise GatewayTimeout("deadline passed before the replica answered") from None
            except DescriptorsExhausted as exc:
                # The gateway's own overload: the replica is fine, do not eject it.
                raise Overloaded(f"{exc}; retry later") from None
            except ConnectError as exc:
                replica.eject(self._clock.time(), self.settings.retry.eject_s)
                log.warning("%s", exc)
                return _CONNECT_FAILED
            except ResetBeforeResponse:
                assert up is not None
                up.abort()
                return _RESET
            except BrokenResponse as exc:
                assert up is not None
                up.abort()
                raise BadGateway(f"bad response from replica: {exc}") from None
            except BaseException:
                if up is not None:
                    up.abort()
                raise
            replica.succeeded()
            if up.status == 503 and (up.draining or up.retry_after):
                return await self._refusal(up, replica)
            await self._relay(cycle, up)
            return _DONE
        finally:
            replica.outstanding -= 1
            if len(model.hold):
                model.hold.release_one()

    async def _refusal(self, up: UpstreamConnection, replica: Replica) -> Attempt:
        """A 503 the replica sent to say 'not me, not now': keep it, hand the connection back."""
        if up.draining:
            replica.mark_draining(self._clock.time(), self.settings.retry.drain_eject_s)
        outcome = Outcome.DRAINING if up.draining else Outcome.SATURATED
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
        return Attempt(outcome, Refusal(up.status, bytes(up.header_block), body))

    async def _relay(self, cycle: ResponseCycle, up: UpstreamConnection) -> None:
        if up.complete:
            cycle.write_full(up.status, up.header_block, up.take_body(), up.content_length or 0)
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
            raise BadGateway(f"bad response from replica: {exc}") from None
        except BaseException:
            up.abort()
            raise
        if up.complete:
            cycle.write_full(up.status, up.header_block, first or b"", up.content_length or 0)
            up.finish()
            return
        cycle.start_stream(up.status, up.header_block, up.content_length)
        try:
            if first:
                await cycle.write_chunk(first)
            while (chunk := await up.next_chunk()) is not None:
                await cycle.write_chunk(chunk)
        except UpstreamError:
            up.abort()
            cycle.abort()
            return
        except BaseException:
            up.abort()
            raise
        up.finish()
        cycle.end_stream()
