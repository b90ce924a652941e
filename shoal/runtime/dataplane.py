"""The protocol-agnostic data plane (KServe's layering): `live`, `ready`, `metadata`, `infer`.
Protocol modules turn bytes into rows and call it; it knows nothing of HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from shoal.runtime.errors import Draining, ModelNotFound, NotReady, echo
from shoal.runtime.model import ServedModel


class DataPlane:
    def __init__(
        self, expected: Iterable[str], *, now: Callable[[], float] = time.monotonic
    ) -> None:
        self.expected = list(expected)
        """Model names this process serves (known before they load: 503, not 404)."""
        self.models: dict[str, ServedModel] = {}
        self.loaded = False
        self.draining = False
        self.inflight = 0
        self.last_refused = 0.0
        """When work was last refused for draining (on `now`): drain lingers while it comes."""
        self._now = now
        self._idle = asyncio.Event()

    # -- state ----------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.loaded and not self.draining

    def add(self, model: ServedModel) -> None:
        self.models[model.name] = model

    def model(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is not None:
            return model
        if name in self.expected:
            raise NotReady(f"model {name!r} is loading")
        raise self._not_found(name)

    def _not_found(self, name: str) -> ModelNotFound:
        names = ", ".join(repr(n) for n in self.expected) or "no models"
        return ModelNotFound(f"model {echo(name)!r} not found; this server has {names}")

    def model_ready(self, name: str) -> bool:
        model = self.models.get(name)
        if model is None and name not in self.expected:
            raise self._not_found(name)
        return model is not None and model.ready and not self.draining

    # -- work -----------------------------------------------------------------------------
    def admit(self) -> None:
        """Count a unit of work in (drain waits for these); refuse new work while draining."""
        if self.draining:
            self.last_refused = self._now()
            raise Draining()
        self.inflight += 1

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self.draining:
            self._idle.set()

    async def infer(
        self,
        name: str,
        rows: Sequence[Any],
        deadline: float,
        gone: Callable[[], bool] | None = None,
    ) -> list[Any]:
        model = self.model(name)
        if not model.ready:
            raise NotReady(f"model {name!r} is not ready")
        self.admit()
        try:
            return await model.infer(rows, deadline, gone)
        finally:
            self.release()

    async def drained(self) -> None:
        """Return once no admitted work is left (call after setting `draining`)."""
        if self.inflight == 0:
            return
        self._idle.clear()
        await self._idle.wait()
