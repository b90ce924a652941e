"""Static discovery: `--upstream name=http://host:port` (repeatable) and `--model name` (a model
known to exist with no replica yet: its requests are held)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import urlsplit

from shoal.gateway.discovery.base import DiscoverySink
from shoal.gateway.registry import Endpoint
from shoal.gateway.settings import StaticUpstream


def parse_upstream_url(url: str) -> Endpoint:
    """`http://host:port` -> Endpoint; raises ValueError with the reason."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"upstream {url!r}: only http:// replicas are supported")
    if not parts.hostname:
        raise ValueError(f"upstream {url!r}: no host")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"upstream {url!r}: give only scheme, host and port")
    return Endpoint(parts.hostname, parts.port or 80)


class StaticDiscovery:
    def __init__(self, upstreams: Sequence[StaticUpstream]) -> None:
        models: dict[str, list[Endpoint]] = {}
        for up in upstreams:
            models.setdefault(up.model, []).extend(parse_upstream_url(u) for u in up.urls)
        self.models = models

    async def run(self, sink: DiscoverySink) -> None:
        for name, endpoints in self.models.items():
            sink.set_model(name, endpoints)
        sink.mark_synced()
        await asyncio.Event().wait()  # the view never changes
