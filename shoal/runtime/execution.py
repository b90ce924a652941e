"""Running model code off the event loop: sync calls go to a worker thread, under torch's
`inference_mode` when torch is loaded (the mode is thread-local, so it is entered in the thread)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def call_sync(fn: Callable[..., T], *args: Any) -> T:
    """Call `fn(*args)` in the current (worker) thread, in inference mode if torch is imported.

    torch is never imported here: a model that does not use it does not pay for it.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return fn(*args)
    with torch.inference_mode():
        return fn(*args)
