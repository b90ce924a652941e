"""Assemble and run a gateway: registry, discovery, auth, metrics, HTTP front end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from pathlib import Path

from shoal.gateway.auth import Authenticator, parse_tokens
from shoal.gateway.discovery.base import Discovery
from shoal.gateway.discovery.static import StaticDiscovery
from shoal.gateway.httpserver import HttpServer
from shoal.gateway.metrics import GatewayMetrics
from shoal.gateway.proxy import Gateway
from shoal.gateway.registry import Registry
from shoal.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


class GatewayApp:
    """A running gateway. `start()` listens and begins discovery; `stop()` undoes both."""

    def __init__(
        self,
        settings: GatewaySettings,
        discoveries: list[Discovery] | None = None,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._rng = rng
        self._discoveries = discoveries
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0

    async def start(self) -> int:
        """Listen and start discovery; returns the bound port."""
        s = self.settings
        clock = self._clock or asyncio.get_running_loop().time
        self.registry = Registry(s, clock)
        self.metrics = GatewayMetrics(self.registry)
        self.auth: Authenticator | None = None
        if s.tokens_file is not None:
            text = await asyncio.to_thread(Path(s.tokens_file).read_text)
            tokens = parse_tokens(text)
            self.auth = Authenticator(tokens, s.auth_health)
        discoveries = self._discoveries
        if discoveries is None:
            discoveries = []
            if s.static or s.kubernetes is None or not s.kubernetes.endpoint_slices:
                discoveries.append(StaticDiscovery(s.static))
            if s.kubernetes is not None:
                # Imported here: only a gateway with Kubernetes discovery pays for it.
                from shoal.gateway.discovery.kubernetes import (
                    KubernetesDiscovery,
                    SecretTokens,
                )

                if s.kubernetes.endpoint_slices:
                    discoveries.append(KubernetesDiscovery(s.kubernetes))
                if s.kubernetes.tokens_secret is not None:
                    if self.auth is None:
                        self.auth = Authenticator({}, s.auth_health)
                    secret = SecretTokens(s.kubernetes, self.auth)
                    self._tasks.append(asyncio.create_task(secret.run()))
        self.gateway = Gateway(s, self.registry, self.metrics, self.auth, clock, self._rng)
        self.server = HttpServer(self.gateway.handle, s.http, clock)
        for disc in discoveries:
            self._tasks.append(asyncio.create_task(disc.run(self.registry)))
        self.port = await self.server.start(s.host, s.port)
        log.info("gateway listening on %s:%d", s.host, self.port)
        return self.port

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.server.stop(grace_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.registry.close()
