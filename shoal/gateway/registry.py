"""What the gateway knows: models, their ready replicas, held requests, retry budgets.

Discovery writes here (`set_model`, `remove_model`, `replace_all`); the request path only reads.
Replica lists are replaced, never mutated, so a request that is choosing sees one consistent list.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from shoal.gateway.budget import RetryBudget
from shoal.gateway.clock import Clock
from shoal.gateway.hold import HoldQueue
from shoal.gateway.settings import GatewaySettings
from shoal.gateway.upstream import UpstreamPool

log = logging.getLogger(__name__)


class Endpoint(NamedTuple):
    host: str
    port: int

    @property
    def key(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Replica:
    """One ready endpoint of one model, as the request path sees it."""

    __slots__ = ("_failures", "ejected_until", "endpoint", "key", "outstanding", "pool")

    def __init__(self, endpoint: Endpoint, pool: UpstreamPool) -> None:
        self.endpoint = endpoint
        self.key = endpoint.key
        self.pool = pool
        self.outstanding = 0
        self.ejected_until = 0.0
        self._failures = 0

    def usable(self, now: float) -> bool:
        return now >= self.ejected_until

    def eject(self, now: float, base_s: float) -> None:
        """Skip this replica for a while after a refused connection, doubling while it keeps
        failing (capped at 32x)."""
        self.ejected_until = now + base_s * (1 << min(self._failures, 5))
        self._failures += 1

    def mark_draining(self, now: float, seconds: float) -> None:
        self.ejected_until = now + seconds

    def succeeded(self) -> None:
        self._failures = 0

    def __repr__(self) -> str:
        return f"Replica({self.key}, outstanding={self.outstanding})"


class Model:
    __slots__ = ("budget", "hold", "holdable", "name", "replicas")

    def __init__(self, name: str, hold: HoldQueue, budget: RetryBudget) -> None:
        self.name = name
        self.replicas: Sequence[Replica] = ()
        self.holdable = True
        """Replicas may still appear (discovery knows the model): hold rather than fail."""
        self.hold = hold
        self.budget = budget


class Registry:
    def __init__(self, settings: GatewaySettings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self.models: dict[str, Model] = {}
        self._pools: dict[Endpoint, tuple[UpstreamPool, int]] = {}
        self.synced = False
        """True once discovery has delivered its first full view (gates /v2/health/ready)."""

    # -- discovery side -----------------------------------------------------------------------

    def mark_synced(self) -> None:
        self.synced = True

    def set_model(self, name: str, endpoints: Sequence[Endpoint]) -> None:
        """Declare `name` with exactly these ready endpoints (possibly none: held at zero)."""
        model = self.models.get(name)
        if model is None:
            r = self._settings.retry
            model = Model(
                name,
                HoldQueue(self._settings.max_held_per_model, self._clock),
                RetryBudget(
                    r.budget_ratio, r.budget_min_per_s, r.budget_max_tokens, self._clock.time
                ),
            )
            self.models[name] = model
            log.info("model %s discovered", name)
        model.holdable = True
        wanted = list(dict.fromkeys(endpoints))
        current = {rep.endpoint: rep for rep in model.replicas}
        if list(current) == wanted:
            return
        replicas = [
            current[ep] if ep in current else Replica(ep, self._acquire_pool(ep)) for ep in wanted
        ]
        for ep, rep in current.items():
            if ep not in wanted:
                self._release_pool(rep.endpoint)
        model.replicas = tuple(replicas)
        log.info("model %s replicas: %s", name, [r.key for r in replicas] or "none")
        if replicas:
            model.hold.release()

    def remove_model(self, name: str) -> None:
        model = self.models.pop(name, None)
        if model is None:
            return
        for rep in model.replicas:
            self._release_pool(rep.endpoint)
        model.replicas = ()
        model.holdable = False
        model.hold.release()  # they find no replica and no way to get one: 503
        log.info("model %s removed", name)

    def replace_all(self, models: Mapping[str, Sequence[Endpoint]]) -> None:
        for name in [n for n in self.models if n not in models]:
            self.remove_model(name)
        for name, endpoints in models.items():
            self.set_model(name, endpoints)

    # -- pools are shared by endpoint (one replica process may serve several models) ---------

    def _acquire_pool(self, ep: Endpoint) -> UpstreamPool:
        entry = self._pools.get(ep)
        if entry is None:
            pool = UpstreamPool(ep.host, ep.port, self._settings.upstream)
            self._pools[ep] = (pool, 1)
            return pool
        self._pools[ep] = (entry[0], entry[1] + 1)
        return entry[0]

    def _release_pool(self, ep: Endpoint) -> None:
        pool, refs = self._pools[ep]
        if refs <= 1:
            del self._pools[ep]
            pool.close()
        else:
            self._pools[ep] = (pool, refs - 1)

    def close(self) -> None:
        for pool, _ in self._pools.values():
            pool.close()
        self._pools.clear()
