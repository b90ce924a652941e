"""Shoal: the user-facing API. Everything else lives in shoal.runtime and shoal.operator."""

from shoal.runtime.batching import batch
from shoal.runtime.handle import handle

__all__ = ["batch", "handle"]
