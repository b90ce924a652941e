"""Assemble and run a gateway: registry, discovery, auth, metrics, HTTP front end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Coroutine
from pathlib import Path

from shoal.gateway.answers import MetricsEndpoint
from shoal.gateway.auth import Authenticator, parse_tokens
from shoal.gateway.clock import Clock, LoopClock
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
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._rng = rng
        self._discoveries = discoveries
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0
        self.metrics_port: int | None = None
        self.metrics_server: HttpServer | None = None

    async def start(self) -> int:
        """Load tokens and credentials, listen, start discovery; returns the bound port.
        Raises TokenFileError, KubeConfigError or OSError (a taken port) having started
        nothing."""
        s = self.settings
        clock = self._clock or LoopClock()
        self.registry = Registry(s, clock)
        self.metrics = GatewayMetrics(self.registry)
        self.auth: Authenticator | None = None
        if s.tokens_file is not None:
            text = await asyncio.to_thread(Path(s.tokens_file).read_text)
            self.auth = Authenticator(parse_tokens(text), s.auth_health)
        discoveries = self._discoveries
        background: list[Coroutine[None, None, None]] = []
        if discoveries is None:
            discoveries = []
            if s.static or s.kubernetes is None or not s.kubernetes.endpoint_slices:
                discoveries.append(StaticDiscovery(s.static))
            if s.kubernetes is not None:
                # Imported here: only a gateway with Kubernetes discovery pays for it.
                from shoal.gateway.discovery.kubernetes import KubernetesDiscovery, SecretTokens
                from shoal.gateway.kubeapi import load_config

                config = await load_config(s.kubernetes.kubeconfig, s.kubernetes.namespace)
                if s.kubernetes.endpoint_slices:
                    discoveries.append(KubernetesDiscovery(s.kubernetes, config))
                if s.kubernetes.tokens_secret is not None:
                    if self.auth is None:
                        self.auth = Authenticator({}, s.auth_health)
                    background.append(SecretTokens(s.kubernetes, self.auth, config).run())
        self.gateway = Gateway(s, self.registry, self.metrics, self.auth, clock, self._rng)
        self.server = HttpServer(self.gateway, s.http, clock, s.retry_after_s)
        try:
            self.port = await self.server.start(s.host, s.port)
            if s.metrics_port is not None:
                self.metrics_server = HttpServer(
                    MetricsEndpoint(self.gateway.answers), s.http, clock, s.retry_after_s
                )
                host = s.metrics_host if s.metrics_host is not None else s.host
                self.metrics_port = await self.metrics_server.start(host, s.metrics_port)
                log.info("gateway metrics on %s:%d", host, self.metrics_port)
        except BaseException:
            for coro in background:
                coro.close()
            await self.server.stop(0.0)
            self.registry.close()
            raise
        for coro in background:
            self._tasks.append(asyncio.create_task(coro))
        for disc in discoveries:
            self._tasks.append(asyncio.create_task(disc.run(self.registry)))
        log.info("gateway listening on %s:%d", s.host, self.port)
        return self.port

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.server.stop(grace_s)
        if self.metrics_server is not None:
            await self.metrics_server.stop(0.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.registry.close()
