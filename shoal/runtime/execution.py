"""Running model code off the event loop: sync calls go to a worker thread, under torch's
`inference_mode` when torch is loaded (the mode is thread-local, so it is entered in the thread).

torch's intra-op thread count is thread-local too under OpenMP: `torch.set_num_threads(1)` in
a model's `__init__` (which runs in the loader thread) would not hold in the worker threads,
which then spin extra OpenMP threads (measured: 4x the CPU per request on a 2-core machine).
So the count seen by the loader is remembered and applied once in each worker thread.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_local = threading.local()
_torch_threads: int | None = None


def remember_torch_threads() -> None:
    """Call in the thread that constructed the model, right after."""
    global _torch_threads
    torch = sys.modules.get("torch")
    if torch is not None:
        _torch_threads = torch.get_num_threads()


def call_sync(fn: Callable[..., T], *args: Any) -> T:
    """Call `fn(*args)` in the current (worker) thread, in inference mode if torch is imported.

    torch is never imported here: a model that does not use it does not pay for it.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return fn(*args)
    wanted = _torch_threads
    if wanted is not None and getattr(_local, "threads", None) != wanted:
        torch.set_num_threads(wanted)
        _local.threads = wanted
    with torch.inference_mode():
        return fn(*args)
