"""One runtime process's life: load models (ready only after), serve, and drain on SIGTERM
(ready false at once, new work 503 with x-shoal-draining, finish what was admitted within the
grace period, then exit 0). A failed load exits non-zero with the cause in the log and in the
termination log.

The drain's timers run on an injected `Clock` (the event loop's by default), so tests move time
with a `FakeClock` and assert exactly when the process asks to exit."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from shoal.runtime import handle as handle_mod
from shoal.runtime.clock import Clock, LoopClock
from shoal.runtime.dataplane import DataPlane
from shoal.runtime.errors import Draining
from shoal.runtime.ingress import check_servable
from shoal.runtime.loading import LoadError, ModelSpec, instantiate
from shoal.runtime.metrics import RuntimeMetrics
from shoal.runtime.model import ServedModel
from shoal.runtime.server import ShoalApp
from shoal.runtime.settings import DEFAULT_MAX_QUEUE_SIZE, ServeSettings

logger = logging.getLogger(__name__)


def write_termination_log(path: str | None, message: str) -> None:
    if path is None:  # not in a pod, and not asked for one
        return
    try:
        with open(path, "w") as f:
            f.write(message[-4000:])  # Kubernetes keeps at most 4096 bytes
    except OSError:
        pass  # not in a pod (or not writable): the log line is enough


class Runtime:
    def __init__(
        self,
        settings: ServeSettings,
        request_exit: Callable[[], None] | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self.metrics = RuntimeMetrics()
        self.plane = DataPlane((spec.name for spec in settings.models), now=self._now)
        self.app = ShoalApp(
            self.plane,
            self.metrics,
            request_timeout_s=settings.request_timeout_s,
            max_timeout_ms=settings.max_timeout_ms,
            max_body_bytes=settings.max_body_bytes,
            on_startup=self._startup,
            on_shutdown=self._shutdown,
        )
        self.request_exit = request_exit or (lambda: None)
        self.exit_code = 0
        self.loaded = asyncio.Event()
        self._load_task: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self.drain_wake: float | None = None
        """While draining: the clock time the drain waits for next (grace end, end of quiet)."""

    @property
    def clock(self) -> Clock:
        if self._clock is None:
            self._clock = LoopClock()  # made on first use, on the running loop
        return self._clock

    def _now(self) -> float:
        return self.clock.time()

    async def _startup(self) -> None:
        # Load in the background: the server listens (liveness answers) while models load.
        self._load_task = asyncio.get_running_loop().create_task(self._load_all())

    async def _load_all(self) -> None:
        loop = asyncio.get_running_loop()
        # Our own loader thread (not the loop's default executor), shut down once loading is
        # over, so an idle thread never holds up the process's exit.
        loader = ThreadPoolExecutor(1, thread_name_prefix="shoal-load")
        try:
            await self._load_each(loop, loader)
        finally:
            loader.shutdown(wait=False)

    async def _load_each(self, loop: asyncio.AbstractEventLoop, loader: ThreadPoolExecutor) -> None:
        try:
            for spec in self.settings.models:
                logger.info("loading model %r from %s", spec.name, spec.target)
                obj, device = await loop.run_in_executor(loader, self._instantiate, spec)
                check_servable(obj)
                model = ServedModel(
                    spec.name,
                    obj,
                    overrides=self.settings.batch_overrides(),
                    default_max_queue_size=DEFAULT_MAX_QUEUE_SIZE,
                    device=device,
                    on_batch=self.metrics.batch_observer(spec.name),
                )
                await model.start()
                self.metrics.watch_model(
                    spec.name,
                    lambda m=model: m.queue_depth,  # type: ignore[misc]
                    lambda m=model: m.inflight,  # type: ignore[misc]
                )
                self.plane.add(model)
                handle_mod.register_local(model)
                policy = model.policy
                logger.info(
                    "model %r ready on %s (%s)",
                    spec.name,
                    device,
                    f"batched: max_batch_size={policy.max_batch_size} "
                    f"batch_wait_timeout_s={policy.batch_wait_timeout_s} "
                    f"batch_wait_mode={policy.batch_wait_mode} "
                    f"max_concurrent_batches={policy.max_concurrent_batches} "
                    f"max_queue_size={policy.max_queue_size}"
                    if policy
                    else "unbatched",
                )
        except Exception as exc:
            cause = str(exc) if isinstance(exc, LoadError) else f"{type(exc).__name__}: {exc}"
            logger.error("model load failed: %s", cause, exc_info=not isinstance(exc, LoadError))
            write_termination_log(self.settings.termination_log, f"model load failed: {cause}")
            self.exit_code = 1
            self.request_exit()
            return
        # Everything loaded so far (modules, weights, the model's objects) lives as long as the
        # process: keep it out of the cyclic GC, so full collections on the hot path stay short.
        gc.collect()
        gc.freeze()
        self.plane.loaded = True
        self.loaded.set()

    def _instantiate(self, spec: ModelSpec) -> tuple[object, str]:
        return instantiate(spec, self.settings.device, self.settings.app_dir)

    def begin_drain(self) -> None:
        """SIGTERM: stop being ready now; exit once admitted work is done or the grace ends."""
        if self.plane.draining:
            return
        self.plane.draining = True
        logger.info(
            "draining: %d request(s) in flight, grace period %.1fs",
            self.plane.inflight,
            self.settings.grace_period_s,
        )
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        clock = self.clock
        grace_ends = clock.time() + self.settings.grace_period_s
        if not await self._until_drained(grace_ends):
            logger.warning("grace period over with %d request(s) unfinished", self.plane.inflight)
            error = Draining("the replica shut down before this request finished")
            for model in self.plane.models.values():
                model.abandon(error)
            # the handlers answer on the next loop turns; then uvicorn closes the connections
            self.request_exit()
            return
        logger.info("drained: every admitted request was answered")
        # Linger while clients still arrive (the gateway or kube-proxy has not seen us go):
        # each gets a 503 with x-shoal-draining instead of a connection reset. Exit once it has
        # been quiet for drain_quiet_s, or when the grace period ends.
        quiet = self.settings.drain_quiet_s
        drained_at = clock.time()
        while True:
            wake = min(max(self.plane.last_refused, drained_at) + quiet, grace_ends)
            if clock.time() >= wake:
                break
            self.drain_wake = wake
            await _sleep_until(clock, wake)
        self.drain_wake = None
        self.request_exit()

    async def _until_drained(self, deadline: float) -> bool:
        """True once no admitted work is left; False if `deadline` (on the clock) came first."""
        waiter = asyncio.ensure_future(self.plane.drained())

        def give_up() -> None:
            waiter.cancel()

        timer = self.clock.call_at(deadline, give_up)
        self.drain_wake = deadline
        try:
            await waiter
            return True
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # we are being cancelled ourselves
                raise
            return False
        finally:
            timer.cancel()

    async def _shutdown(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        for model in self.plane.models.values():
            handle_mod.unregister_local(model.name)
            await model.aclose()


async def _sleep_until(clock: Clock, when: float) -> None:
    wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def ring() -> None:
        if not wake.done():
            wake.set_result(None)

    timer = clock.call_at(when, ring)
    try:
        await wake
    finally:
        timer.cancel()
