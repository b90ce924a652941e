"""One reconcile pass over one ModelService, from the cache, writing only what differs.

A pass (`Reconciler.sync(key)`) reads the ModelService and what it owns from the
`ObservedIndex` (fed by kopf's watches), then in named steps:
1. `_parse`: the spec (pydantic; invalid -> an InvalidSpec condition, no retry until it changes);
2. `_model_uri`: a registry alias resolved to a version (polled every `alias_poll_seconds` by the
   injected monotonic clock);
3. `_converge`: for each desired object, who controls the object of that name (anything not
   controlled by this ModelService's uid is left untouched: ResourceConflict), and whether it
   drifted (`drift.covers`); only drifted or missing objects are server-side applied;
4. `_write_status`: status computed from the Deployment and pods in the index, compared with the
   object's *current* status (so a status edited by someone else heals), patched only when it
   differs; condition transitions become Events, repeats of one Event are counted on it.

Passes come from a `WorkQueue` (at most one per object at a time) fed by watch events, plus one
resync per object every ~`resync_seconds` (jittered, so a restart does not bunch them). Objects
being deleted are skipped: the garbage collector removes what they own (owner references).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError

from shoal.operator import drift, resources
from shoal.operator.autoscaler.loop import Autoscaler
from shoal.operator.index import Key, ObservedIndex
from shoal.operator.kube import Kube, KubeError
from shoal.operator.registry import Resolution, ResolutionError, is_alias, resolve
from shoal.operator.settings import OperatorSettings
from shoal.operator.spec import ModelServiceSpec, parse_spec, validate_name
from shoal.operator.status import Observation, Transition, compute_status, status_patch
from shoal.operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
RESYNC_JITTER = 0.2
"""Each resync lands within ±20 % of its interval."""


class KubeClient(Protocol):
    """What the reconciler needs from the API (kube.Kube)."""

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...
    async def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None: ...
    async def patch_status(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]: ...
    async def post_event(
        self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str, now: datetime
    ) -> str: ...
    async def repeat_event(self, namespace: str, name: str, count: int, now: datetime) -> None: ...
    async def close(self) -> None: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ObjectState:
    """Per-ModelService memory of this process (lost on restart, by design: every field is
    re-derived by the next pass)."""

    uid: str
    applied_generation: int = 0
    resolution: Resolution | None = None
    resolved_for: str | None = None
    resolved_at: float = float("-inf")
    resolve_error: str | None = None
    failures: int = 0
    events: dict[tuple[str, str, str], tuple[str, int]] = field(default_factory=dict)
    """(type, reason, message) -> (Event name, count): a repeat is counted, not re-posted."""


class Blocked(Exception):
    """A pass cannot go on; (reason, message) goes into Ready and Progressing."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        parts.append(f"spec.{loc}: {err['msg']}" if loc else f"spec: {err['msg']}")
    return "; ".join(parts)


def object_logger(key: Key) -> logging.LoggerAdapter[logging.Logger]:
    """Log lines tagged with the object, as kopf's per-object logger does (cli formats it)."""
    return logging.LoggerAdapter(log, {"k8s_ref": {"namespace": key[0], "name": key[1]}})


class Reconciler:
    """Owns the API client, the index, the work queue and per-object state."""

    def __init__(
        self,
        settings: OperatorSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        kube: KubeClient | None = None,
        index: ObservedIndex | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.monotonic = monotonic
        self.jitter = jitter
        self._kube = kube
        self.index = index if index is not None else ObservedIndex()
        self.queue: WorkQueue[Key] = WorkQueue()
        self.states: dict[Key, ObjectState] = {}
        self.paused = False
        """Another operator replica has priority (kopf peering): no passes meanwhile."""
        self.passes = 0
        """Completed reconcile passes (tests wait on it)."""
        self.writes: Counter[str] = Counter()
        """Applies per kind, plus `status` patches and `event` posts (tests and the bench)."""
        self._workers: list[asyncio.Task[None]] = []
        self.autoscaler: Autoscaler | None = None
        """The autoscaler loop, while the operator runs (see autoscaler/)."""

    @property
    def kube(self) -> KubeClient:
        if self._kube is None:
            raise RuntimeError("the operator has not started (no API client)")
        return self._kube

    async def start(self, workers: int = 4) -> None:
        if self._kube is None:
            self._kube = await Kube.connect()
        self._workers = [asyncio.create_task(self._work()) for _ in range(workers)]
        self._start_autoscaler()

    def _start_autoscaler(self) -> None:
        """The autoscaler loop runs beside the passes (its own task, see autoscaler/), reads
        this index, and acts only while this replica is not paused by peering."""
        if not self.settings.autoscaler.enabled or not isinstance(self._kube, Kube):
            return
        self.autoscaler = Autoscaler(
            self.settings.autoscaler, self.index, self._kube, active=lambda: not self.paused
        )
        self.autoscaler.start()

    async def stop(self) -> None:
        if self.autoscaler is not None:
            await self.autoscaler.stop()
            self.autoscaler = None
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        self.queue.close()
        if self._kube is not None:
            await self._kube.close()
            self._kube = None

    # Feeding: called by the kopf handlers.
    def observe_modelservice(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        if event_type == "DELETED":
            key = self.index.put_modelservice(body)
            self.index.drop_modelservice(key)
            self.states.pop(key, None)
            self.queue.forget(key)
            return
        self.queue.add(self.index.put_modelservice(body))

    def poke(self, key: Key) -> None:
        if self.index.modelservice(key) is not None:
            self.queue.add(key)

    # The workers.
    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                if not self.paused:
                    await self._pass(key)
            finally:
                self.queue.done(key)

    async def _pass(self, key: Key) -> None:
        logger = object_logger(key)
        try:
            await self.sync(key)
        except KubeError as exc:
            state = self.states.get(key)
            tries = state.failures if state is not None else 0
            delay = RETRY_DELAYS[min(tries, len(RETRY_DELAYS) - 1)]
            if state is not None:
                state.failures += 1
            logger.warning("reconcile pass failed (%s), retrying in %gs", exc, delay)
            self.queue.add_after(key, delay)
        except Exception:
            logger.exception("reconcile pass failed, retrying in 30s")
            self.queue.add_after(key, 30.0)

    def _resync_after(self, key: Key, spec_uri: str | None) -> None:
        interval = self.settings.resync_seconds
        if is_alias(spec_uri):
            interval = min(interval, self.settings.alias_poll_seconds)
        spread = 1.0 + RESYNC_JITTER * (2.0 * self.jitter() - 1.0)
        self.queue.add_after(key, interval * spread)

    def state(self, key: Key, uid: str) -> ObjectState:
        """The memory of this object; a new object under an old name starts afresh."""
        state = self.states.get(key)
        if state is None or state.uid != uid:
            state = self.states[key] = ObjectState(uid=uid)
        return state

    # One pass.
    async def sync(self, key: Key) -> None:
        try:
            body = self.index.modelservice(key)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return  # gone or going: the garbage collector takes what it owns
            state = self.state(key, body["metadata"]["uid"])
            await self._sync(body, state)
            state.failures = 0
        finally:
            self.passes += 1
        spec_uri = ((body.get("spec") or {}).get("model") or {}).get("uri")
        self._resync_after(key, spec_uri)

    async def _sync(self, body: Mapping[str, Any], state: ObjectState) -> None:
        md = body["metadata"]
        owner = resources.Owner(name=md["name"], namespace=md["namespace"], uid=md["uid"])
        generation = int(md.get("generation") or 0)
        obs = Observation(
            generation=generation,
            desired_replicas=0,
            url=resources.service_url(owner, self.settings),
            selector=resources.selector_string(owner.name),
            deployment=self.index.owned("Deployment", (owner.namespace, owner.name)),
            pods=self.index.pods_of((owner.namespace, owner.name)),
        )
        try:
            spec = self._parse(body)
            if generation < state.applied_generation:
                return  # a stale body: a newer spec was already applied
            obs = await self._model_uri(spec, state, obs)
            if obs.alias_uri is not None and obs.model_uri is None:
                raise Blocked("ModelResolutionFailed", obs.resolve_error or "")
            obs = replace(obs, deployment=await self._converge(spec, owner, obs.model_uri))
            state.applied_generation = max(state.applied_generation, generation)
        except Blocked as blocked:
            obs = replace(obs, blocking=(blocked.reason, blocked.message))
        await self._write_status(body, state, obs)

    def _parse(self, body: Mapping[str, Any]) -> ModelServiceSpec:
        try:
            validate_name(body["metadata"]["name"])
            return parse_spec(body.get("spec") or {})
        except ValidationError as exc:
            raise Blocked("InvalidSpec", format_validation_error(exc)) from None
        except ValueError as exc:
            raise Blocked("InvalidSpec", str(exc)) from None

    async def _model_uri(
        self, spec: ModelServiceSpec, state: ObjectState, obs: Observation
    ) -> Observation:
        obs = replace(obs, desired_replicas=spec.desired_replicas(), model_uri=spec.model.uri)
        if not is_alias(spec.model.uri):
            return obs
        alias = spec.model.uri
        assert alias is not None
        await self.resolve_alias(state, alias)
        resolved = state.resolution
        obs = replace(
            obs,
            alias_uri=alias,
            model_uri=resolved.uri if resolved else None,
            model_version=resolved.version if resolved else None,
            resolve_error=state.resolve_error,
        )
        return obs

    async def resolve_alias(self, state: ObjectState, uri: str) -> None:
        """Re-resolve `uri` when it changed or `alias_poll_seconds` passed on the injected
        monotonic clock since the last try."""
        due = (
            state.resolved_for != uri
            or self.monotonic() - state.resolved_at >= self.settings.alias_poll_seconds
        )
        if not due:
            return
        state.resolved_at = self.monotonic()
        if state.resolved_for != uri:
            state.resolution, state.resolved_for = None, uri
        try:
            state.resolution = await resolve(uri, self.settings.mlflow_tracking_uri)
            state.resolve_error = None
        except ResolutionError as exc:
            state.resolve_error = str(exc)

    async def _observed(self, obj: Mapping[str, Any], key: Key) -> dict[str, Any] | None:
        current = self.index.owned(obj["kind"], key)
        if current is None:  # not in the (label-selected) cache: someone else's, or none
            current = await self.kube.get(obj["apiVersion"], obj["kind"], *key)
        return current

    async def _apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        try:
            applied = await self.kube.apply(obj)
        except KubeError as exc:
            if not exc.invalid:
                raise
            raise Blocked(
                "ApplyFailed", f"the API server refused the {obj['kind']}: {exc.message}"
            ) from None
        self.writes[obj["kind"]] += 1
        return applied

    async def _converge(
        self, spec: ModelServiceSpec, owner: resources.Owner, model_uri: str | None
    ) -> dict[str, Any] | None:
        """Apply what is missing or drifted; returns the Deployment as it now is."""
        desired = resources.desired_objects(spec, owner, self.settings, model_uri=model_uri)
        key = (owner.namespace, owner.name)
        found = await asyncio.gather(*(self._observed(obj, key) for obj in desired))
        conflicts = [
            f"{obj['kind']} {key[0]}/{key[1]} {drift.describe_foreign(current)}"
            for obj, current in zip(desired, found, strict=True)
            if current is not None and drift.control(current, owner.uid) is drift.Control.FOREIGN
        ]
        if conflicts:
            raise Blocked(
                "ResourceConflict",
                "; ".join(conflicts) + ": left untouched (delete it, or give the ModelService "
                "another name)",
            )
        stale = [
            obj
            for obj, current in zip(desired, found, strict=True)
            if current is None or not drift.covers(current, obj)
        ]
        # The pods' ServiceAccount, Service and PDB at once, then the Deployment (its pods
        # need the ServiceAccount).
        first = [o for o in stale if o["kind"] != "Deployment"]
        last = [o for o in stale if o["kind"] == "Deployment"]
        applied = await asyncio.gather(*(self._apply(o) for o in first))
        applied += [await self._apply(o) for o in last]
        if stale:
            object_logger(key).info("applied %s", ", ".join(o["kind"] for o in stale))
        observed = {o["kind"]: f for o, f in zip(desired, found, strict=True)}
        observed.update({o["kind"]: a for o, a in zip(stale, applied, strict=True)})
        return observed.get("Deployment")

    async def _write_status(
        self, body: Mapping[str, Any], state: ObjectState, obs: Observation
    ) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        current = self.index.modelservice(key) or body
        previous = dict(current.get("status") or {})
        new, transitions = compute_status(obs, previous, self.clock())
        patch = status_patch(new, previous)
        if not patch:
            return
        stored = await self.kube.patch_status(key[0], key[1], patch)
        self.writes["status"] += 1
        self.index.put_modelservice(stored)  # so the next pass compares with what it wrote
        object_logger(key).debug("status patched: %s", sorted(patch))
        if self.settings.post_events:
            for t in transitions:
                await self._post_event(current, state, t)

    async def _post_event(self, body: Mapping[str, Any], state: ObjectState, t: Transition) -> None:
        type_ = "Warning" if t.warning else "Normal"
        message = f"{t.type}={t.status}: {t.message}" if t.message else f"{t.type}={t.status}"
        seen = state.events.get((type_, t.reason, message))
        now = self.clock()
        md = body["metadata"]
        try:
            if seen is not None:
                name, count = seen
                await self.kube.repeat_event(md["namespace"], name, count + 1, now)
                state.events[(type_, t.reason, message)] = (name, count + 1)
            else:
                name = await self.kube.post_event(
                    body, type_=type_, reason=t.reason, message=message, now=now
                )
                state.events[(type_, t.reason, message)] = (name, 1)
            self.writes["event"] += 1
        except KubeError as exc:  # Events are best effort; status already says it
            if seen is not None and exc.status == 404:
                state.events.pop((type_, t.reason, message), None)  # expired: post anew next time
            object_logger((md["namespace"], md["name"])).warning("could not post an Event: %s", exc)
