"""A loaded user model as the data plane sees it: one `infer(rows, deadline)` whatever the user
wrote (a batched method, a plain or async `__call__`/`predict`, or a function).

Sync code never runs on the event loop: batched sync functions run in the batcher's thread,
unbatched ones in this model's own single worker thread (models are rarely thread-safe).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shoal.runtime.batch_queue import Batcher, BatchPolicy, gather_rows
from shoal.runtime.batching import BatchedFunction, batched_helpers, find_batched
from shoal.runtime.clock import Clock, LoopClock
from shoal.runtime.deadlines import Deadlines
from shoal.runtime.errors import ClientGone, ModelError, QueueFull, from_model
from shoal.runtime.execution import call_sync
from shoal.runtime.ingress import find_ingress
from shoal.runtime.loading import LoadError

logger = logging.getLogger(__name__)


def _entry_point(obj: object) -> Callable[..., Any]:
    if inspect.isroutine(obj):
        return obj
    if not isinstance(obj, type):
        if inspect.getattr_static(type(obj), "__call__", None) is not None:
            return obj.__call__  # type: ignore[operator, no-any-return]
        predict = getattr(obj, "predict", None)
        if callable(predict):
            return predict  # type: ignore[no-any-return]
    raise TypeError(f"{obj!r} has no __call__ or predict method to serve")


class ServedModel:
    """One named model in this process."""

    def __init__(
        self,
        name: str,
        obj: object,
        *,
        overrides: dict[str, Any] | None = None,
        default_max_queue_size: int | None = None,
        clock: Clock | None = None,
        device: str = "cpu",
        on_batch: Callable[[int], None] | None = None,
        on_retry: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.obj = obj
        self.device = device
        self.ready = False
        self.inflight = 0
        self._clock = clock
        self._on_batch = on_batch
        # metrics.BatchObserver carries both; a plain callable counts only batch sizes
        self._on_retry = on_retry or getattr(on_batch, "retried", None)
        self.batcher: Batcher[Any, Any] | None = None
        self.policy: BatchPolicy | None = None
        self._executor: ThreadPoolExecutor | None = None
        # requests awaiting results, with their deadlines (grace-period expiry answers them)
        self._deadlines: Deadlines | None = None
        over = {k: v for k, v in (overrides or {}).items() if v is not None}
        self._overrides = dict(over)
        self.max_queue_size = over.get("max_queue_size", default_max_queue_size)
        found = find_batched(obj)
        if found is not None:
            batched, instance = found
            # flags/env > the decorator > the server default
            if "max_queue_size" not in over and batched.policy.max_queue_size is None:
                over["max_queue_size"] = default_max_queue_size
            self.policy = batched.policy.with_overrides(**over)
            self._batched: tuple[BatchedFunction, object | None] | None = (batched, instance)
            self._fn: Callable[..., Any] = batched
            self.is_async = True
        else:
            self._batched = None
            self._fn = _entry_point(obj)
            self.is_async = inspect.iscoroutinefunction(self._fn)
        # Batched helper methods awaited by the entry point (Ray Serve's tutorial shape): they
        # get the runtime's knobs, metrics and clock too.
        self._helpers = [] if found is not None else batched_helpers(obj)
        self.helper_batchers: list[Batcher[Any, Any]] = []
        if self._helpers:
            if not self.is_async:
                helper = self._helpers[0][0]
                raise LoadError(
                    f"model {name!r}: {type(obj).__name__}.{helper} is @shoal.batch, so it "
                    f"must be awaited, but __call__ is a plain def (it would return a "
                    f"coroutine). Write `async def __call__(self, row): return await "
                    f"self.{helper}(row)`, or put @shoal.batch on __call__ itself"
                )
            self.policy = self._helpers[0][1].policy.with_overrides(**over)
        self.ingress = find_ingress(obj)
        self.inputs: list[dict[str, Any]] = list(getattr(obj, "inputs", None) or [])
        self.outputs: list[dict[str, Any]] = list(getattr(obj, "outputs", None) or [])
        self.inputs_by_name = {d["name"]: d for d in self.inputs if "name" in d}
        self.default_output = self.outputs[0]["name"] if self.outputs else "output0"

    @property
    def clock(self) -> Clock:
        if self._clock is None:
            self._clock = LoopClock()
        return self._clock

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the batcher with the runtime's policy (on the running loop) and go ready."""
        if self._batched is not None:
            batched, instance = self._batched
            batched.reset(instance)  # a batcher made before the runtime's knobs applied
            self.batcher = batched.batcher_for(
                instance, self.policy, self._on_batch, clock=self._clock, on_retry=self._on_retry
            )
        over = self._overrides
        for _, helper in self._helpers:
            helper.reset(self.obj)
            self.helper_batchers.append(
                helper.batcher_for(
                    self.obj,
                    helper.policy.with_overrides(**over),
                    self._on_batch,
                    clock=self._clock,
                    on_retry=self._on_retry,
                )
            )
        self.ready = True

    async def aclose(self) -> None:
        self.ready = False
        if self.batcher is not None:
            await self.batcher.aclose()
        for batcher in self.helper_batchers:
            await batcher.aclose()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def abandon(self, error: Exception) -> int:
        """Answer every waiting request with `error` now (the grace period is over and the
        model has not finished): a clear 503 instead of a cut connection. Returns how many."""
        if self._deadlines is None:  # nothing was ever asked
            return 0
        count = 0
        for futures in self._deadlines.waiting():
            pending = [f for f in futures if not f.done()]
            count += bool(pending)
            for fut in pending:
                fut.set_exception(error)
        return count

    # -- state for metrics and drain ------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        if self.batcher is not None:
            return self.batcher.queue_depth
        if self.helper_batchers:
            return sum(b.queue_depth for b in self.helper_batchers)
        return max(0, self.inflight - 1)

    # -- inference ------------------------------------------------------------------------
    async def infer(
        self, rows: Sequence[Any], deadline: float, gone: Callable[[], bool] | None = None
    ) -> list[Any]:
        """One result per row, or a ShoalError (QueueFull, DeadlineExceeded, ModelError...).

        `deadline` is on `self.clock`; time spent queued counts. `gone()`: the client left.
        """
        self.inflight += 1
        try:
            deadlines = self._deadlines
            if deadlines is None:
                deadlines = self._deadlines = Deadlines(self.clock)
            batcher = self.batcher
            if batcher is not None:
                futures = batcher.submit_many(rows, gone)
            else:
                futures = [self._start_unbatched(rows, gone)]
            key = deadlines.add(deadline, futures)
            try:
                results = await gather_rows(futures)
            finally:
                deadlines.remove(key)
            if batcher is not None:
                return results
            out: list[Any] = results[0]
            return out
        finally:
            self.inflight -= 1

    def _start_unbatched(
        self, rows: Sequence[Any], gone: Callable[[], bool] | None
    ) -> asyncio.Future[list[Any]]:
        limit = self.max_queue_size
        if limit is not None and self.inflight > limit + 1:
            raise QueueFull(f"{self.name}: queue is full (limit {limit}); retry later")
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[list[Any]] = loop.create_future()
        if self.is_async:
            task = loop.create_task(self._run_async(rows, reply))
            reply.add_done_callback(lambda _: task.cancel())
        else:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"shoal-{self.name}")
            work = loop.run_in_executor(self._executor, self._run_sync, rows, reply, gone)
            work.add_done_callback(functools.partial(_transfer, self.name, reply))
        return reply

    async def _run_async(self, rows: Sequence[Any], reply: asyncio.Future[list[Any]]) -> None:
        try:
            if self.helper_batchers and len(rows) > 1:  # let the helper batch the rows together
                out = list(await asyncio.gather(*(self._fn(row) for row in rows)))
            else:
                out = [await self._fn(row) for row in rows]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not reply.done():
                reply.set_exception(from_model(self.name, exc, own=True))
            return
        if not reply.done():
            reply.set_result(out)

    def _run_sync(
        self,
        rows: Sequence[Any],
        reply: asyncio.Future[list[Any]],
        gone: Callable[[], bool] | None,
    ) -> list[Any] | None:
        # Expired, or the client left, while waiting for the worker: skip the work.
        if reply.done() or (gone is not None and gone()):
            return None
        out = [call_sync(self._fn, row) for row in rows]
        if out and inspect.iscoroutine(out[0]):
            for c in out:
                c.close()
            raise ModelError(
                f"{self.name}: {getattr(self._fn, '__qualname__', self._fn)} is a plain def but "
                f"returned a coroutine; make it `async def` (and `await` what it calls)"
            )
        return out


def _transfer(
    name: str, reply: asyncio.Future[list[Any]], work: asyncio.Future[list[Any] | None]
) -> None:
    if reply.done():
        return
    exc = work.exception()
    if exc is not None:
        reply.set_exception(from_model(name, exc, own=True))
    else:
        result = work.result()
        if result is None:  # skipped: the client went away
            reply.set_exception(ClientGone(f"{name}: the client went away"))
        else:
            reply.set_result(result)
