"""`@shoal.batch`: the user-facing decorator. Callers pass ONE input and get ONE result; the
function receives a list. The queue and dispatcher live in batch_queue.py."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, overload

from shoal.runtime.batch_queue import DEFAULT_WAIT_MODE, Batcher, BatchPolicy, gather_rows
from shoal.runtime.clock import Clock

__all__ = [
    "BatchPolicy",
    "BatchedFunction",
    "Batcher",
    "BoundBatched",
    "batch",
    "batched_helpers",
    "find_batched",
    "gather_rows",
]


class BatchedFunction:
    """What `@shoal.batch` returns: call it with ONE item, get that item's result.

    On a class it is a descriptor: each instance gets its own `Batcher` (stored in the
    instance's `__dict__`), created on first use or by the runtime with its overrides.
    """

    def __init__(self, func: Callable[..., Any], policy: BatchPolicy, clock: Clock | None) -> None:
        if not callable(func):
            raise TypeError(f"@shoal.batch needs a function, got {func!r}")
        self.func = func
        self.policy = policy
        self.clock = clock
        self.is_async = inspect.iscoroutinefunction(func)
        self._attr = f"_shoal_batcher_{func.__name__}"
        self._batcher: Batcher[Any, Any] | None = None  # plain functions only
        functools.update_wrapper(self, func)

    def batcher_for(
        self,
        instance: object | None,
        policy: BatchPolicy | None = None,
        on_batch: Callable[[int], None] | None = None,
        clock: Clock | None = None,
        on_retry: Callable[[int], None] | None = None,
    ) -> Batcher[Any, Any]:
        """The batcher of a plain function (instance None) or of one instance's method.

        `policy`, `on_batch`, `on_retry` and `clock` apply only when it is created here (the runtime
        creates it first).
        """
        clock = clock or self.clock
        if instance is None:
            if self._batcher is None:
                self._batcher = Batcher(
                    self.func,
                    policy or self.policy,
                    is_async=self.is_async,
                    clock=clock,
                    name=self.func.__qualname__,
                    on_batch=on_batch,
                    on_retry=on_retry,
                )
            return self._batcher
        existing: Batcher[Any, Any] | None = instance.__dict__.get(self._attr)
        if existing is None:
            existing = Batcher(
                functools.partial(self.func, instance),
                policy or self.policy,
                is_async=self.is_async,
                clock=clock,
                name=self.func.__qualname__,
                on_batch=on_batch,
                on_retry=on_retry,
            )
            instance.__dict__[self._attr] = existing
        return existing

    def reset(self, instance: object | None) -> None:
        """Forget a batcher (after `aclose`), so a later use makes a fresh one."""
        if instance is None:
            self._batcher = None
        else:
            instance.__dict__.pop(self._attr, None)

    async def __call__(self, item: Any) -> Any:
        fut = self.batcher_for(None).submit(item)
        return (await gather_rows([fut]))[0]

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> BatchedFunction: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> BoundBatched: ...
    def __get__(self, instance: object | None, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return BoundBatched(self, instance)


class BoundBatched:
    __slots__ = ("batched", "instance")

    def __init__(self, batched: BatchedFunction, instance: object) -> None:
        self.batched = batched
        self.instance = instance

    @property
    def batcher(self) -> Batcher[Any, Any]:
        return self.batched.batcher_for(self.instance)

    async def __call__(self, item: Any) -> Any:
        fut = self.batcher.submit(item)
        return (await gather_rows([fut]))[0]


@overload
def batch(_func: Callable[..., Any], /) -> BatchedFunction: ...
@overload
def batch(
    _func: None = None,
    /,
    *,
    max_batch_size: int = 10,
    batch_wait_timeout_s: float = 0.01,
    max_concurrent_batches: int = 1,
    max_queue_size: int | None = None,
    isolate_failures: bool = True,
    batch_wait_mode: str = DEFAULT_WAIT_MODE,
    clock: Clock | None = None,
) -> Callable[[Callable[..., Any]], BatchedFunction]: ...
def batch(
    _func: Callable[..., Any] | None = None,
    /,
    *,
    max_batch_size: int = 10,
    batch_wait_timeout_s: float = 0.01,
    max_concurrent_batches: int = 1,
    max_queue_size: int | None = None,
    isolate_failures: bool = True,
    batch_wait_mode: str = DEFAULT_WAIT_MODE,
    clock: Clock | None = None,
) -> BatchedFunction | Callable[[Callable[..., Any]], BatchedFunction]:
    """Batch calls to a function or method that takes a list of inputs and returns a list.

    Callers pass ONE input and get ONE result. `async def` runs on the event loop (it must not
    block); plain `def` runs in a worker thread (under torch's inference mode when torch is
    loaded). `clock` is for tests. The runtime's flags and env override these values.

    When a call raises, the batch is bisected to find the rows at fault, so only their requests
    fail (a `ValueError`/`TypeError` from one row is its client's 400) and the others get
    their answers; `isolate_failures=False` fails the whole batch instead (for a function with
    side effects that must not repeat). See shoal/runtime/isolation.py for the bound.

    `batch_wait_mode="adaptive"` (the default) dispatches at once when the model is idle and the
    measured arrival rate cannot fill the batch within the wait; "hard" waits
    `batch_wait_timeout_s` for a full batch even when the server is idle (Ray Serve's rule).
    See batch_queue.py.
    """
    policy = BatchPolicy(
        max_batch_size=max_batch_size,
        batch_wait_timeout_s=batch_wait_timeout_s,
        max_concurrent_batches=max_concurrent_batches,
        max_queue_size=max_queue_size,
        isolate_failures=isolate_failures,
        batch_wait_mode=batch_wait_mode,
    )

    def decorate(func: Callable[..., Any]) -> BatchedFunction:
        return BatchedFunction(func, policy, clock)

    if _func is not None:
        return decorate(_func)
    return decorate


def find_batched(obj: object) -> tuple[BatchedFunction, object | None] | None:
    """The batched entry point of a model object: a batched function, or an instance whose
    class's `__call__` (or `predict`) is batched. Returns (batched, instance-or-None)."""
    if isinstance(obj, BatchedFunction):
        return obj, None
    for name in ("__call__", "predict"):
        attr = inspect.getattr_static(type(obj), name, None)
        if isinstance(attr, BatchedFunction):
            return attr, obj
    return None


def batched_helpers(obj: object) -> list[tuple[str, BatchedFunction]]:
    """`@shoal.batch` methods of a model's class other than its entry point: Ray Serve's
    tutorial shape, `async def __call__(self, x): return await self.handle_batch(x)`."""
    if isinstance(obj, type) or inspect.isroutine(obj):
        return []
    found: dict[str, BatchedFunction] = {}
    for klass in reversed(type(obj).__mro__):
        for name, attr in vars(klass).items():
            if isinstance(attr, BatchedFunction) and name not in ("__call__", "predict"):
                found[name] = attr
    return sorted(found.items())
