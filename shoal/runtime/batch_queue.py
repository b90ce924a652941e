"""The batch queue behind `@shoal.batch` (see batching.py), with Ray Serve's semantics:

- `BatchPolicy`: the knobs, frozen and validated when the decorator is applied.
- `Batcher`: a queue plus a dispatcher. The wait timer starts at the first queued item; a full
  batch goes at once; cancelled or expired items are dropped before the call; the result length
  is checked; every future is resolved in `finally` (otherwise requests hang).
- One difference from Ray Serve, on purpose: Ray forms the next batch while the previous one
  runs, so small pre-formed batches queue behind its semaphore. Here a batch is formed when a
  batch slot is free, from the whole backlog (up to `max_batch_size`): under load, batches are
  as large as the backlog allows, and an item that has already waited `batch_wait_timeout_s`
  is never made to wait again.
- A batch whose call raises is bisected to find the rows at fault (isolation.py), so a bad
  row fails only its own request; `isolate_failures=False` turns that off.
- Two wait modes (`BatchPolicy.batch_wait_mode`). "hard" is Ray Serve's rule: a batch short of
  `max_batch_size` waits `batch_wait_timeout_s` from its first item, even when nothing else is
  coming, so a lone request on an idle server pays the whole wait. "adaptive" is work
  conserving: with a batch slot free, a short batch waits only while the measured arrival
  rate says the remaining wait can fill it (expected arrivals >= the rows missing); otherwise
  it goes at once. Under load the slot is rarely free, so rows that arrive while the model is
  busy still form batches from the backlog. The rate is an exponentially decaying count of
  arrivals (time constant RATE_TAU_S), so it falls back towards zero when traffic stops.
  One more wait in adaptive mode: right after a batch, a short batch waits up to that batch's
  own duration (never past `batch_wait_timeout_s`). Closed-loop clients send their next rows
  when their answers arrive, in a wave just after each batch; without this grace the few rows
  queued during the call went alone and the wave formed the next batch (measured at 64
  clients: mean batch 23.5 against hard mode's 28.7). Only when rows are queued as the batch
  ends: a lone client's next request finds the queue empty and goes at once.
- Time comes from an injected `Clock`, so tests drive the timer without sleeping.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from shoal.runtime import isolation
from shoal.runtime.clock import Clock, LoopClock, TimerHandle
from shoal.runtime.context import current_request_id
from shoal.runtime.errors import (
    ClientGone,
    InvalidInput,
    ModelError,
    NotReady,
    QueueFull,
    ShoalError,
    from_model,
)
from shoal.runtime.execution import call_sync
from shoal.runtime.isolation import Isolated

logger = logging.getLogger(__name__)

WAIT_MODES = ("hard", "adaptive")
DEFAULT_WAIT_MODE = "adaptive"
"""Measured in bench/RESULTS.md (`python -m bench.sweep`): from 1 to 16 clients adaptive serves
1.8-10x the requests of hard at a lower p50; at 64 the two are within this machine's noise."""
RATE_TAU_S = 0.1
"""Time constant of the arrival-rate estimate: long enough to smooth a few batches' arrivals,
short enough that a burst's rate is forgotten within a second of quiet."""

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class BatchPolicy:
    """How a batch is formed. Validated at construction (so at decoration time)."""

    max_batch_size: int = 10
    """Most items handed to the function in one call."""
    batch_wait_timeout_s: float = 0.01
    """Longest wait for more items, counted from the first queued item."""
    max_concurrent_batches: int = 1
    """Batches that may run at once (each sync batch gets its own worker thread)."""
    max_queue_size: int | None = None
    """Most items waiting; one more is refused with QueueFull (HTTP 503). None: unbounded."""
    isolate_failures: bool = True
    """When a batch raises, call it again on halves to find the rows at fault (isolation.py);
    off for batch functions whose side effects must not repeat."""
    batch_wait_mode: str = DEFAULT_WAIT_MODE
    """"hard": always wait `batch_wait_timeout_s` for a full batch (Ray Serve's rule).
    "adaptive": with the model idle, wait only while the arrival rate can fill the batch."""

    def __post_init__(self) -> None:
        if isinstance(self.max_batch_size, bool) or not isinstance(self.max_batch_size, int):
            raise TypeError(f"max_batch_size must be an int, got {self.max_batch_size!r}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if isinstance(self.batch_wait_timeout_s, bool) or not isinstance(
            self.batch_wait_timeout_s, int | float
        ):
            raise TypeError(
                f"batch_wait_timeout_s must be a number, got {self.batch_wait_timeout_s!r}"
            )
        if not self.batch_wait_timeout_s >= 0:  # also rejects NaN
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        mcb = self.max_concurrent_batches
        if isinstance(mcb, bool) or not isinstance(mcb, int) or mcb < 1:
            raise ValueError(f"max_concurrent_batches must be an int >= 1, got {mcb!r}")
        mqs = self.max_queue_size
        if mqs is not None and (isinstance(mqs, bool) or not isinstance(mqs, int) or mqs < 1):
            raise ValueError(f"max_queue_size must be None or an int >= 1, got {mqs!r}")
        if not isinstance(self.isolate_failures, bool):
            raise TypeError(f"isolate_failures must be a bool, got {self.isolate_failures!r}")
        if self.batch_wait_mode not in WAIT_MODES:
            raise ValueError(
                f"batch_wait_mode must be one of {', '.join(WAIT_MODES)}, "
                f"got {self.batch_wait_mode!r}"
            )

    def with_overrides(self, **overrides: Any) -> BatchPolicy:
        """A copy with the non-None overrides applied (flags and env beat the decorator)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


class _Item:
    __slots__ = ("enqueued_at", "future", "gone", "request_id", "value")

    def __init__(
        self,
        value: Any,
        future: asyncio.Future[Any],
        enqueued_at: float,
        gone: Callable[[], bool] | None,
        request_id: bytes | None,
    ) -> None:
        self.value = value
        self.future = future
        self.enqueued_at = enqueued_at
        self.gone = gone
        self.request_id = request_id


class Batcher(Generic[In, Out]):
    """The queue and dispatcher behind one batched function (or one instance's method).

    Binds to the running event loop on first use; `aclose()` fails what is still queued.
    """

    def __init__(
        self,
        fn: Callable[[list[In]], Awaitable[Sequence[Out]] | Sequence[Out]],
        policy: BatchPolicy,
        *,
        is_async: bool | None = None,
        clock: Clock | None = None,
        name: str = "",
        on_batch: Callable[[int], None] | None = None,
        on_retry: Callable[[int], None] | None = None,
    ) -> None:
        self.fn = fn
        self.policy = policy
        self.name = name or getattr(fn, "__qualname__", repr(fn))
        self.is_async = inspect.iscoroutinefunction(fn) if is_async is None else is_async
        self.on_batch = on_batch
        self.on_retry = on_retry
        """Called with the extra calls spent isolating the rows of a failed batch."""
        self._clock = clock
        self._isolation_logged = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._queue: deque[_Item] = deque()
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._work: set[Future[Any]] = set()
        self._timer: TimerHandle | None = None
        self._timer_when = 0.0
        self._closed = False
        self._adaptive = policy.batch_wait_mode == "adaptive"
        self._rate = 0.0  # decaying arrival count / RATE_TAU_S, as of _rate_at
        self._rate_at = 0.0
        self._started_at = 0.0  # the latest batch's start (adaptive mode's grace)
        self._grace_until = 0.0

    # -- introspection (metrics read these at scrape time) --------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running_batches(self) -> int:
        return self._running

    def arrival_rate(self, now: float | None = None) -> float:
        """Rows per second, exponentially weighted over about RATE_TAU_S."""
        now = self.clock.time() if now is None else now
        return self._rate * math.exp(-(now - self._rate_at) / RATE_TAU_S)

    @property
    def clock(self) -> Clock:
        if self._clock is None:
            self._clock = LoopClock()
        return self._clock

    # -- submission -----------------------------------------------------------------------
    def submit(self, value: In) -> asyncio.Future[Out]:
        return self.submit_many((value,))[0]

    def submit_many(
        self, values: Sequence[In], gone: Callable[[], bool] | None = None
    ) -> list[asyncio.Future[Out]]:
        """Queue several rows at once (all or none: the queue bound is checked first).

        `gone()` says whether the caller went away (its client disconnected); such rows are
        dropped when a batch is formed instead of being computed for nobody."""
        if self._closed:
            raise NotReady(f"{self.name}: batcher is closed")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        queue = self._queue
        limit = self.policy.max_queue_size
        if limit is not None and len(values) > limit:
            raise InvalidInput(
                f"{self.name}: a request of {len(values)} rows cannot fit a queue of {limit}; "
                f"send at most {limit} rows per request"
            )
        if limit is not None and len(queue) + len(values) > limit:
            raise QueueFull(
                f"{self.name}: queue is full ({len(queue)} waiting, limit {limit}); retry later"
            )
        now = self.clock.time()
        if self._adaptive:
            self._rate = self.arrival_rate(now) + len(values) / RATE_TAU_S
            self._rate_at = now
        rid = current_request_id.get()
        futures: list[asyncio.Future[Out]] = []
        for value in values:
            fut: asyncio.Future[Out] = loop.create_future()
            queue.append(_Item(value, fut, now, gone, rid))
            futures.append(fut)
        self._maybe_dispatch()
        return futures

    # -- dispatch -------------------------------------------------------------------------
    def _maybe_dispatch(self) -> None:
        policy = self.policy
        queue = self._queue
        while self._running < policy.max_concurrent_batches and queue:
            head = queue[0]
            if head.future.done():  # cancelled or expired while waiting: drop
                queue.popleft()
                continue
            close_at = head.enqueued_at + policy.batch_wait_timeout_s
            if len(queue) < policy.max_batch_size:
                now = self.clock.time()
                if now < close_at:
                    if not self._adaptive or self._can_fill(now, close_at):
                        self._arm(close_at)
                        return
                    if now < self._grace_until:
                        self._arm(min(close_at, self._grace_until))
                        return
            items: list[_Item] = []
            while queue and len(items) < policy.max_batch_size:
                item = queue.popleft()
                if item.future.done():
                    continue
                if item.gone is not None and item.gone():
                    item.future.set_exception(ClientGone(f"{self.name}: the client went away"))
                    continue
                items.append(item)
            if items:
                self._start(items)
        if self._timer is not None and (
            not queue or self._running >= policy.max_concurrent_batches
        ):
            self._timer.cancel()
            self._timer = None

    def _can_fill(self, now: float, close_at: float) -> bool:
        """Adaptive mode: do the arrivals expected before `close_at` fill the batch?"""
        missing = self.policy.max_batch_size - len(self._queue)
        return self.arrival_rate(now) * (close_at - now) >= missing

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            if self._timer_when == when:
                return
            self._timer.cancel()
        self._timer_when = when
        self._timer = self.clock.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._maybe_dispatch()

    def _start(self, items: list[_Item]) -> None:
        """Hand a batch to the model now. A sync function is submitted to its thread right
        here, not from a task scheduled for later: the model starts on the next batch while the
        event loop is still writing the previous batch's responses."""
        loop = self._loop
        assert loop is not None
        self._running += 1
        if self._adaptive:
            self._started_at = self.clock.time()
        if self.on_batch is not None:
            self.on_batch(len(items))
        values = [item.value for item in items]
        if self.is_async:
            task = loop.create_task(self._run_async(items, values))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.policy.max_concurrent_batches,
                thread_name_prefix=f"shoal-batch-{self.name}",
            )
        try:
            work = self._executor.submit(self._call_sync, values)
        except RuntimeError as exc:  # executor shut down
            self._finish(items, None, exc)
            return
        self._work.add(work)

        def done(work: Future[Any]) -> None:  # in the model thread: hop to the loop
            loop.call_soon_threadsafe(self._sync_done, items, work)

        work.add_done_callback(done)

    def _call_sync(self, values: list[Any]) -> Any:
        """In the worker thread: the batch, and on failure the search for the rows at fault."""
        try:
            return call_sync(self.fn, values)
        except Exception as exc:
            if not self.policy.isolate_failures:
                raise
            return call_sync(isolation.run_sync, self.fn, values, exc, self.name)

    def _sync_done(self, items: list[_Item], work: Future[Any]) -> None:
        self._work.discard(work)
        if work.cancelled():
            self._finish(items, None, ModelError(f"{self.name}: batch was cancelled"))
            return
        exc = work.exception()
        self._finish(items, None if exc is not None else work.result(), exc)

    async def _run_async(self, items: list[_Item], values: list[Any]) -> None:
        try:
            results = await self.fn(values)  # type: ignore[misc]
        except asyncio.CancelledError:
            self._finish(items, None, ModelError(f"{self.name}: batch was cancelled"))
            raise
        except Exception as exc:
            if not self.policy.isolate_failures:
                self._finish(items, None, exc)
                return
            try:
                results = await isolation.run_async(
                    self.fn,  # type: ignore[arg-type]
                    values,
                    exc,
                    self.name,
                )
            except asyncio.CancelledError:
                self._finish(items, None, ModelError(f"{self.name}: batch was cancelled"))
                raise
        self._finish(items, results, None)

    def _finish(self, items: list[_Item], results: Any, error: BaseException | None) -> None:
        """Resolve every future of a batch (never leave one hanging), then form the next."""
        try:
            if error is not None:
                raise error
            if type(results) is Isolated:
                self._isolated(items, results)
                results = results.results
            else:
                results = isolation.checked(results, len(items), self.name)
            for item, result in zip(items, results, strict=True):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):  # the model failed just this item
                    item.future.set_exception(from_model(self.name, result, own=True))
                else:
                    item.future.set_result(result)
        except Exception as exc:
            err = from_model(self.name, exc, own=False)
            if not isinstance(exc, ShoalError):
                logger.error("%s: batch of %d failed", self.name, len(items), exc_info=exc)
            for item in items:
                if not item.future.done():
                    item.future.set_exception(err)
        finally:
            for item in items:  # a BaseException went past: never leave a hang
                if not item.future.done():
                    item.future.set_exception(ModelError(f"{self.name}: batch did not finish"))
            self._running -= 1
            if self._adaptive:
                # only with rows already queued: a lone client's next request (queue empty
                # now) must not wait for a wave that is not coming
                now = self.clock.time()
                self._grace_until = now + (now - self._started_at) if self._queue else 0.0
            if not self._closed:
                self._maybe_dispatch()

    def _isolated(self, items: list[_Item], outcome: Isolated) -> None:
        """Count the extra calls; log the first isolation of this model with the request id of
        the row at fault (later ones at debug: a client sending bad rows must not flood the
        log; the metric counts them all)."""
        if self.on_retry is not None:
            self.on_retry(outcome.calls)
        row = outcome.first_row
        level = logging.DEBUG if self._isolation_logged else logging.WARNING
        self._isolation_logged = True
        if not logger.isEnabledFor(level):
            return
        if row is None:
            found = "no single row failed on its own"
        else:
            bad = outcome.results[row]
            found = f"first at fault: row {row}, {type(bad).__name__}: {bad}"
        logger.log(
            level,
            "%s: a batch of %d rows raised %s: %s; %d extra call(s) to find the rows at fault, %s",
            self.name,
            len(items),
            type(outcome.first_error).__name__,
            outcome.first_error,
            outcome.calls,
            found,
            extra={"request_id": _text(items[row].request_id) if row is not None else None},
        )

    async def aclose(self) -> None:
        """Stop taking items, fail what is queued, wait for running batches."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(NotReady(f"{self.name}: shutting down"))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._work:
            # Our done callbacks were added first, so each batch's results are delivered on
            # the loop before its wrapped future completes here.
            await asyncio.gather(
                *(asyncio.wrap_future(w) for w in list(self._work)), return_exceptions=True
            )
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


def _text(rid: bytes | None) -> str | None:
    return rid.decode(errors="replace") if rid is not None else None


async def gather_rows(futures: Sequence[asyncio.Future[Out]]) -> list[Out]:
    """Await a request's row futures; on the first failure drop the rest from the queue."""
    if len(futures) == 1:
        try:
            return [await futures[0]]
        except BaseException:
            futures[0].cancel()
            raise
    try:
        return [await f for f in futures]
    except BaseException:
        for f in futures:
            if not f.done():
                f.cancel()
            elif not f.cancelled():
                f.exception()  # mark retrieved: one error answers the request
        raise
