"""Shoal: the user-facing API. Everything else lives in shoal.runtime and shoal.operator."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoal.runtime.batching import batch
from shoal.runtime.handle import handle

if TYPE_CHECKING:
    from shoal.offline import batch_predict

__all__ = ["batch", "batch_predict", "handle"]


def __getattr__(name: str) -> Any:
    # batch_predict pulls in pandas and Ray: import it only when a user asks for it.
    if name == "batch_predict":
        from shoal.offline import batch_predict

        return batch_predict
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")
