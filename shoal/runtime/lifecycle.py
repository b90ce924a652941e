"""One runtime process's life: load models (ready only after), serve, and drain on SIGTERM
(ready false at once, new work 503 with x-shoal-draining, finish what was admitted within the
grace period, then exit 0). A failed load exits non-zero with the cause in the log and in the
termination log."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from shoal.runtime import handle as handle_mod
from shoal.runtime.dataplane import DataPlane
from shoal.runtime.errors import Draining
from shoal.runtime.loading import LoadError, ModelSpec, instantiate
from shoal.runtime.metrics import RuntimeMetrics
from shoal.runtime.model import ServedModel
from shoal.runtime.server import ShoalApp
from shoal.runtime.settings import DEFAULT_MAX_QUEUE_SIZE, ServeSettings

logger = logging.getLogger(__name__)


def write_termination_log(path: str, message: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(message[-4000:])  # Kubernetes keeps at most 4096 bytes
    except OSError:
        pass  # not in a pod (or not writable): the log line is enough


class Runtime:
    def __init__(
        self, settings: ServeSettings, request_exit: Callable[[], None] | None = None
    ) -> None:
        self.settings = settings
        self.metrics = RuntimeMetrics()
        self.plane = DataPlane(spec.name for spec in settings.models)
        self.app = ShoalApp(
            self.plane,
            self.metrics,
            request_timeout_s=settings.request_timeout_s,
            max_body_bytes=settings.max_body_bytes,
            on_startup=self._startup,
            on_shutdown=self._shutdown,
        )
        self.request_exit = request_exit or (lambda: None)
        self.exit_code = 0
        self.loaded = asyncio.Event()
        self._load_task: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None

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
        grace_ends = time.monotonic() + self.settings.grace_period_s
        try:
            await asyncio.wait_for(self.plane.drained(), self.settings.grace_period_s)
            logger.info("drained: every admitted request was answered")
        except TimeoutError:
            logger.warning("grace period over with %d request(s) unfinished", self.plane.inflight)
            error = Draining("the replica shut down before this request finished")
            for model in self.plane.models.values():
                model.abandon(error)
            # the handlers answer on the next loop turns; then uvicorn closes the connections
            self.request_exit()
            return
        # Linger while clients still arrive (the gateway or kube-proxy has not seen us go):
        # each gets a 503 with x-shoal-draining instead of a connection reset. Exit once it has
        # been quiet for drain_quiet_s, or when the grace period ends.
        quiet = self.settings.drain_quiet_s
        drained_at = time.monotonic()
        while True:
            now = time.monotonic()
            wake = min(max(self.plane.last_refused, drained_at) + quiet, grace_ends)
            if now >= wake:
                break
            await asyncio.sleep(wake - now)
        self.request_exit()

    async def _shutdown(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        for model in self.plane.models.values():
            handle_mod.unregister_local(model.name)
            await model.aclose()
