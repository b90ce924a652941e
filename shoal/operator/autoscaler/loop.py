"""The autoscaler loop: once a tick, for every ModelService with `spec.autoscaling`, scrape its
replicas and the gateways, ask the policy, and write `spec.replicas` through the scale
subresource when the answer changed (with an Event carrying the reason).

It never blocks reconciles: it runs as its own task, scrapes with short timeouts and bounded
concurrency (one shared httpx client), and reads pods from the operator's watch cache rather
than listing them. A replica that does not answer is unknown to the policy (HPA's rule: neither
a reason to scale up nor to scale down), logged once per change, and the loop never dies of one
object's failure. Only the active operator replica acts (kopf peering: `active()`).

Before lowering the count it marks the least-loaded ready pods as the cheapest to delete
(`controller.kubernetes.io/pod-deletion-cost`), so the ReplicaSet removes those; each removed
replica then leaves the gateway's rotation (readiness false on SIGTERM -> EndpointSlice), and
finishes what it holds before it exits (the runtime's drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
from pydantic import ValidationError

from shoal.operator import spec as api
from shoal.operator.autoscaler import observe
from shoal.operator.autoscaler.discovery import GatewayTargets, Resolver, loop_resolver
from shoal.operator.autoscaler.policy import (
    Config,
    Decision,
    Observation,
    Policy,
    ReplicaObservation,
    ReplicaState,
    State,
)
from shoal.operator.autoscaler.settings import AutoscalerSettings

log = logging.getLogger(__name__)

Key = tuple[str, str]
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
# How long a scale write may take to come back through the watch before the cache is trusted
# again (someone may have set the old count back on purpose).
ECHO_WAIT_SECONDS = 10.0


class ScaleClient(Protocol):
    """What the loop needs from the API (kube.Kube)."""

    async def scale(self, namespace: str, name: str, replicas: int) -> None: ...
    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> Any: ...
    async def annotate_pod(
        self, namespace: str, name: str, annotations: Mapping[str, str]
    ) -> None: ...
    async def post_event(
        self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str, now: datetime
    ) -> Any: ...


class Source(Protocol):
    """The operator's watch cache (index.ObservedIndex)."""

    def keys(self) -> list[Key]: ...
    def modelservice(self, key: Key) -> dict[str, Any] | None: ...
    def pods_of(self, key: Key) -> list[dict[str, Any]]: ...


class IndexSource:
    """A Source over the operator's watch indices: (namespace, name) -> the ModelService body,
    and (namespace, ModelService name) -> its pods (kopf indices have this shape)."""

    def __init__(
        self,
        modelservices: Mapping[Key, Collection[Mapping[str, Any]]],
        pods: Mapping[Key, Collection[Mapping[str, Any]]],
    ) -> None:
        self._msvcs, self._pods = modelservices, pods

    def keys(self) -> list[Key]:
        return list(self._msvcs)

    def modelservice(self, key: Key) -> dict[str, Any] | None:
        bodies = list(self._msvcs.get(key, ()))
        return dict(bodies[-1]) if bodies else None

    def pods_of(self, key: Key) -> list[dict[str, Any]]:
        return [dict(p) for p in self._pods.get(key, ())]


@dataclass
class _Model:
    uid: str
    policy: Policy
    last_status_at: float = float("-inf")
    last_depth: float | None = None
    silent: frozenset[str] = frozenset()
    status_write: asyncio.Task[None] | None = None
    wrote: tuple[int, int, float] | None = None
    """(count before, count written, when): until the watch echoes it, the count is ours."""


class Autoscaler:
    def __init__(
        self,
        settings: AutoscalerSettings,
        source: Source,
        kube: ScaleClient,
        *,
        active: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
        http: httpx.AsyncClient | None = None,
        resolver: Resolver = loop_resolver,
    ) -> None:
        self.settings = settings
        self.source = source
        self.kube = kube
        self.active = active
        self.clock = clock
        self.gateways = GatewayTargets(
            settings.gateway_metrics_urls,
            resolver=resolver,
            clock=clock,
            refresh_s=settings.gateway_dns_refresh_seconds,
            stale_s=settings.gateway_dns_stale_seconds,
        )
        self._http = http
        self._own_http = http is None
        self._sem = asyncio.Semaphore(settings.max_concurrent_scrapes)
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.models: dict[Key, _Model] = {}
        self._specs: dict[Key, tuple[tuple[Any, Any], api.ModelServiceSpec]] = {}
        """key -> ((uid, generation), the parsed spec)"""
        self.decisions: list[tuple[Key, Decision]] = []
        """Changes written, newest last (bounded): what tests and `status` read."""
        self.observed: deque[tuple[Key, Observation, Decision]] = deque(maxlen=600)
        """The latest observations with what was decided (for diagnostics)."""

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            limits = httpx.Limits(max_connections=self.settings.max_concurrent_scrapes)
            self._http = httpx.AsyncClient(
                timeout=self.settings.scrape_timeout_seconds, limits=limits
            )
        return self._http

    async def settle(self) -> None:
        """Wait for the status writes in flight."""
        pending = [m.status_write for m in self.models.values() if m.status_write is not None]
        await asyncio.gather(*pending, return_exceptions=True)

    async def aclose(self) -> None:
        await self.settle()
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    def start(self) -> None:
        """Run the loop as a background task of the running event loop, until stop()."""
        self._stopped = asyncio.Event()
        self._task = asyncio.create_task(self.run(self._stopped))

    async def stop(self) -> None:
        if self._task is not None:
            self._stopped.set()
            await self._task
            self._task = None

    async def run(self, stopped: asyncio.Event) -> None:
        """Tick until `stopped` is set; one tick's failure is logged, never fatal."""
        try:
            while not stopped.is_set():
                started = self.clock()
                if self.active():
                    try:
                        await self.tick()
                    except Exception:
                        log.exception("autoscaler tick failed; next tick goes on")
                due = started + self.settings.interval_seconds
                while not stopped.is_set() and (wait := due - self.clock()) > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            stopped.wait(), timeout=min(wait, self.settings.zero_poll_seconds)
                        )
                    if not stopped.is_set() and self.active():
                        await self._from_zero()
        finally:
            await self.aclose()

    async def _from_zero(self) -> None:
        """Between ticks: decide at once for a model at zero that a gateway holds requests
        for (scale-from-zero waits on this, not on the next tick)."""
        keys = self.source.keys()
        zero = [k for k in keys if _at_zero(self.source.modelservice(k))]
        if not zero or not self.gateways:
            return
        texts = await self._gateways_held()
        for key in zero:
            if any(observe.gateway_held(t, key[1]) > 0 for t in texts if t is not None):
                try:
                    await self._one(key, texts)
                except Exception:
                    log.exception("autoscaler decision from zero failed; the tick goes on")

    async def tick(self) -> None:
        # Only objects that ask for autoscaling, by a look at the raw body: parsing and a task
        # for each of 200 idle fixed-size ModelServices every second was most of an idle
        # operator's CPU (bench/RESULTS.md, the operator curve).
        every = self.source.keys()
        keys = [k for k in every if _autoscaled(self.source.modelservice(k))]
        for gone in set(self.models) - set(keys):
            del self.models[gone]
        for gone in set(self._specs) - set(keys):
            del self._specs[gone]
        if not keys:
            return
        held = await self._gateways_held()
        await asyncio.gather(*(self._one(key, held) for key in keys), return_exceptions=False)

    async def _scrape(self, url: str, headers: Mapping[str, str] | None = None) -> str | None:
        async with self._sem:
            try:
                resp = await self.http.get(url, headers=headers)
            except httpx.HTTPError:
                return None
        return resp.text if resp.status_code == 200 else None

    async def _gateways_held(self) -> list[str | None]:
        s = self.settings
        headers = {"authorization": f"Bearer {s.gateway_token}"} if s.gateway_token else None
        return list(
            await asyncio.gather(*(self._scrape(u, headers) for u in await self.gateways.urls()))
        )

    def _spec(self, key: Key, body: Mapping[str, Any]) -> api.ModelServiceSpec:
        """The parsed spec, once per generation (a spec edit bumps it; status writes do not).
        A body without a generation (not from the API server) is parsed every time."""
        md = body.get("metadata") or {}
        version = (md.get("uid"), md.get("generation"))
        cached = self._specs.get(key)
        if cached is not None and version[1] is not None and cached[0] == version:
            return cached[1]
        spec = api.parse_spec(body.get("spec") or {})
        self._specs[key] = (version, spec)
        return spec

    def _model(self, key: Key, uid: str, config: Config) -> _Model:
        m = self.models.get(key)
        if m is None or m.uid != uid:
            # A new object (or a new operator process): a fresh state; see policy.py for why
            # that neither flaps nor freezes.
            m = self.models[key] = _Model(uid, Policy(config, State()))
        elif m.policy.config != config:
            m.policy = Policy(config, m.policy.state)  # a spec edit keeps the history
        return m

    async def _one(self, key: Key, gateway_texts: Sequence[str | None]) -> None:
        body = self.source.modelservice(key)
        if body is None:
            return
        try:
            spec = self._spec(key, body)
        except (ValidationError, ValueError):
            return  # the reconciler reports it in status
        config = observe.config_for(spec, self.settings.window_overrides)
        if config is None:
            self.models.pop(key, None)
            return
        md = body["metadata"]
        model = self._model(key, str(md.get("uid", "")), config)
        targets = observe.replica_targets(self.source.pods_of(key))
        texts = await asyncio.gather(
            *(
                self._scrape(t.url) if t.url and t.state is ReplicaState.READY else _none()
                for t in targets
            )
        )
        replicas = []
        silent = set()
        for t, text in zip(targets, texts, strict=True):
            load: float | None = 0.0
            if t.state is ReplicaState.READY:
                load = observe.replica_load(text, key[1]) if text is not None else None
                if load is None:
                    silent.add(t.name)
            replicas.append(ReplicaObservation(t.name, t.state, load))
        if silent != model.silent:
            if silent - model.silent:
                log.warning("%s/%s: no metrics from %s", *key, ", ".join(sorted(silent)))
            model.silent = frozenset(silent)
        held = sum(observe.gateway_held(t, key[1]) for t in gateway_texts if t is not None)
        current = spec.replicas if spec.replicas is not None else spec.desired_replicas()
        if model.wrote is not None:
            before, after, at = model.wrote
            if current == before and self.clock() - at < ECHO_WAIT_SECONDS:
                current = after  # our write has not come back through the watch yet
            else:
                model.wrote = None
        obs = Observation(self.clock(), current, tuple(replicas), held)
        decision = model.policy.decide(obs)
        self.observed.append((key, obs, decision))
        try:
            await self._act(key, body, model, obs, decision)
        except Exception as exc:  # the API refused or is away: the next tick tries again
            log.warning("%s/%s: autoscaler could not write: %s", *key, exc)

    async def _act(
        self, key: Key, body: Mapping[str, Any], model: _Model, obs: Observation, d: Decision
    ) -> None:
        ns, name = key
        now = self.clock()
        if d.changed(obs.current):
            if d.replicas < obs.current:
                await self._mark_cheapest(ns, obs)
            await self.kube.scale(ns, name, d.replicas)
            model.wrote = (obs.current, d.replicas, now)
            self.decisions = [*self.decisions[-999:], (key, d)]
            message = f"{obs.current} -> {d.replicas}: {d.reason}"
            log.info("%s/%s: scaled %s", ns, name, message)
            try:
                await self.kube.post_event(
                    body, type_="Normal", reason="Autoscaled", message=message, now=_utcnow()
                )
            except Exception as exc:  # Events are best effort
                log.warning("%s/%s: could not post an Event: %s", ns, name, exc)
        depth = round(d.demand, 2)
        due = now - model.last_status_at >= self.settings.status_interval_seconds
        writing = model.status_write is not None and not model.status_write.done()
        if depth != model.last_depth and (due or d.changed(obs.current)) and not writing:
            # In the background: a slow API server must not stretch the next tick.
            model.last_depth, model.last_status_at = depth, now
            model.status_write = asyncio.create_task(self._write_depth(ns, name, depth))

    async def _write_depth(self, ns: str, name: str, depth: float) -> None:
        try:
            await self.kube.patch_status(ns, name, {"queueDepth": depth})
        except Exception as exc:
            log.warning("%s/%s: could not write status.queueDepth: %s", ns, name, exc)

    async def _mark_cheapest(self, ns: str, obs: Observation) -> None:
        """Give ready replicas a deletion cost equal to their load (the idlest go first);
        starting replicas go first anyway (a ReplicaSet deletes unready pods first)."""
        ready = [r for r in obs.replicas if r.state is ReplicaState.READY]
        for r in ready:
            cost = int(r.load) if r.load is not None else 1_000_000
            await self.kube.annotate_pod(ns, r.name, {DELETION_COST: str(cost)})


def _autoscaled(body: Mapping[str, Any] | None) -> bool:
    spec = (body or {}).get("spec") or {}
    return spec.get("autoscaling") is not None


def _at_zero(body: Mapping[str, Any] | None) -> bool:
    return _autoscaled(body) and ((body or {}).get("spec") or {}).get("replicas") == 0


async def _none() -> None:
    return None


def _utcnow() -> datetime:
    return datetime.now(UTC)
