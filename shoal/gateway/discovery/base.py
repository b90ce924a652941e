"""The discovery contract."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shoal.gateway.registry import Endpoint


class DiscoverySink(Protocol):
    def set_model(self, name: str, endpoints: Sequence[Endpoint]) -> None:
        """`name` exists with exactly these ready endpoints (none: requests are held)."""
        ...

    def remove_model(self, name: str) -> None: ...

    def mark_synced(self) -> None:
        """The first full view has been delivered (the gateway turns ready)."""
        ...


class Discovery(Protocol):
    async def run(self, sink: DiscoverySink) -> None:
        """Feed `sink` until cancelled. Raises only on unrecoverable configuration errors."""
        ...
