"""The kopf layer: thin handlers over the pure parts.

One reconcile pass (`Reconciler.sync`) does, for one ModelService: parse the spec (invalid ->
a condition, and `kopf.PermanentError` from spec handlers), resolve a registry alias, server-side
apply `desired_objects` (a no-op when nothing drifted; repairs edits and deletions otherwise),
read the pods, compute status, and patch it only when it changed, posting Events on condition
transitions. Passes run from the spec handlers (create/update/resume) and from a per-object
daemon that wakes on events of the owned Deployment and Pods, or at the resync interval.
Status goes through the status subresource, so it never retriggers the spec handlers.
Deletion is left to Kubernetes' garbage collector (owner references).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import kopf
from pydantic import ValidationError

from shoal.operator import registry as reg
from shoal.operator import resources as res
from shoal.operator import spec as api
from shoal.operator import status as st
from shoal.operator.autoscaler.loop import Autoscaler, IndexSource
from shoal.operator.kube import Kube, KubeError
from shoal.operator.settings import OperatorSettings

log = logging.getLogger(__name__)

Key = tuple[str, str]
Log = logging.Logger | logging.LoggerAdapter[Any]


class KubeClient(Protocol):
    """What the reconciler needs from the API (kube.Kube; a fake in unit tests)."""

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...
    async def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None: ...
    async def list(
        self, api_version: str, kind: str, namespace: str, label_selector: str
    ) -> list[dict[str, Any]]: ...
    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None: ...
    async def post_event(
        self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str, now: datetime
    ) -> None: ...
    async def close(self) -> None: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _ObjectState:
    """Per-ModelService memory of this operator process (lost on restart, by design: every
    field here is re-derived by the next pass)."""

    uid: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    poke: asyncio.Event = field(default_factory=asyncio.Event)
    applied_generation: int = 0
    resolution: reg.Resolution | None = None
    resolved_for: str | None = None
    resolved_at: float = float("-inf")
    resolve_error: str | None = None
    written: dict[str, Any] = field(default_factory=dict)
    """Status fields this process wrote last: the watch may not have echoed them back yet."""


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        parts.append(f"spec.{loc}: {err['msg']}" if loc else f"spec: {err['msg']}")
    return "; ".join(parts)


class Reconciler:
    """Owns the API client and per-object state; every handler calls into it."""

    def __init__(
        self,
        settings: OperatorSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        kube: KubeClient | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.monotonic = monotonic
        self._kube = kube
        self.states: dict[Key, _ObjectState] = {}
        self.passes = 0
        """Completed reconcile passes (tests wait on it after a restart)."""
        self.autoscaler: Autoscaler | None = None
        """The autoscaler loop, while the operator runs (see autoscaler/)."""

    @property
    def kube(self) -> KubeClient:
        if self._kube is None:
            raise RuntimeError("the operator has not started (no API client)")
        return self._kube

    async def start(self) -> None:
        if self._kube is None:
            self._kube = await Kube.connect()

    async def stop(self) -> None:
        if self._kube is not None:
            await self._kube.close()
            self._kube = None

    def state(self, key: Key, uid: str) -> _ObjectState:
        """The memory of this object; a new object under an old name starts afresh."""
        state = self.states.get(key)
        if state is None or state.uid != uid:
            state = self.states[key] = _ObjectState(uid=uid)
        return state

    def poke(self, key: Key) -> None:
        state = self.states.get(key)
        if state is not None:
            state.poke.set()

    async def _resolve(self, state: _ObjectState, uri: str) -> None:
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
            state.resolution = await reg.resolve(uri, self.settings.mlflow_tracking_uri)
            state.resolve_error = None
        except reg.ResolutionError as exc:
            state.resolve_error = str(exc)

    async def sync(self, body: Mapping[str, Any], logger: Log | None = None) -> None:
        """One reconcile pass. Raises kopf.PermanentError for a spec that cannot be served."""
        logger = logger or log
        md = body["metadata"]
        key: Key = (md["namespace"], md["name"])
        state = self.state(key, md["uid"])
        async with state.lock:
            try:
                await self._sync_locked(body, state, logger)
            finally:
                self.passes += 1

    async def _sync_locked(self, body: Mapping[str, Any], state: _ObjectState, logger: Log) -> None:
        md = body["metadata"]
        generation = int(md.get("generation") or 0)
        owner = res.Owner(name=md["name"], namespace=md["namespace"], uid=md["uid"])
        selector = res.selector_string(owner.name)
        obs = st.Observation(
            generation=generation,
            desired_replicas=0,
            url=res.service_url(owner, self.settings),
            selector=selector,
            deployment=None,
            pods=[],
        )
        try:
            api.validate_name(owner.name)
            spec = api.parse_spec(body.get("spec") or {})
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            message = format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
            blocked = replace(obs, blocking=("InvalidSpec", message))
            await self._write_status(body, state, blocked, logger)
            raise kopf.PermanentError(f"invalid spec: {message}") from None

        if generation < state.applied_generation:
            return  # a stale body: a newer spec was already applied by another pass
        alias = spec.model.uri if reg.is_alias(spec.model.uri) else None
        model_uri = spec.model.uri
        if alias is not None:
            await self._resolve(state, alias)
            model_uri = state.resolution.uri if state.resolution else None
        obs = replace(
            obs,
            desired_replicas=spec.desired_replicas(),
            model_uri=model_uri,
            model_version=state.resolution.version if alias and state.resolution else None,
            alias_uri=alias,
            resolve_error=state.resolve_error if alias else None,
        )
        if alias is not None and model_uri is None:
            await self._write_status(body, state, obs, logger)
            return

        deployment: dict[str, Any] | None = None
        kind = ""
        try:
            for obj in res.desired_objects(spec, owner, self.settings, model_uri=model_uri):
                kind = obj["kind"]
                applied = await self.kube.apply(obj)
                if kind == "Deployment":
                    deployment = applied
        except KubeError as exc:
            if not exc.invalid:
                raise
            message = f"the API server refused the {kind}: {exc.message}"
            deployment = await self.kube.get("apps/v1", "Deployment", owner.namespace, owner.name)
            blocked = replace(obs, deployment=deployment, blocking=("ApplyFailed", message))
            await self._write_status(body, state, blocked, logger)
            raise kopf.PermanentError(message) from None
        state.applied_generation = max(state.applied_generation, generation)
        pods = await self.kube.list("v1", "Pod", owner.namespace, selector)
        observed = replace(obs, deployment=deployment, pods=pods)
        await self._write_status(body, state, observed, logger)

    async def _write_status(
        self, body: Mapping[str, Any], state: _ObjectState, obs: st.Observation, logger: Log
    ) -> None:
        previous = {**(body.get("status") or {}), **state.written}
        new, transitions = st.compute_status(obs, previous, self.clock())
        patch = st.status_patch(new, previous)
        if not patch:
            return
        md = body["metadata"]
        await self.kube.patch_status(md["namespace"], md["name"], patch)
        state.written.update(patch)
        logger.debug("status patched: %s", sorted(patch))
        if not self.settings.post_events:
            return
        for t in transitions:
            try:
                await self.kube.post_event(
                    body,
                    type_="Warning" if t.warning else "Normal",
                    reason=t.reason,
                    message=f"{t.type}={t.status}: {t.message}"
                    if t.message
                    else f"{t.type}={t.status}",
                    now=self.clock(),
                )
            except KubeError as exc:  # Events are best effort; status already says it
                logger.warning("could not post an Event: %s", exc)

    async def monitor(self, body: Mapping[str, Any], stopped: Any, logger: Log) -> None:
        """The per-object daemon: a pass on every poke (owned objects changed), else at the
        resync interval (drift repair, alias polling)."""
        md = body["metadata"]
        key: Key = (md["namespace"], md["name"])
        state = self.state(key, md["uid"])
        while not stopped:
            interval = self.settings.resync_seconds
            if reg.is_alias(((body.get("spec") or {}).get("model") or {}).get("uri")):
                interval = min(interval, self.settings.alias_poll_seconds)
            poked = asyncio.ensure_future(state.poke.wait())
            halted = asyncio.ensure_future(stopped.wait())
            try:
                await asyncio.wait(
                    {poked, halted}, timeout=interval, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                poked.cancel()
                halted.cancel()
            if stopped:
                break
            state.poke.clear()
            try:
                await self.sync(body, logger)
            except kopf.PermanentError:
                pass  # already reported in status; wait for a spec change
            except Exception as exc:
                logger.warning("reconcile pass failed, retrying at the next event: %s", exc)
            # Coalesce bursts of pod/deployment events into one pass.
            await asyncio.sleep(self.settings.min_pass_interval_seconds)
        if self.states.get(key) is state:
            del self.states[key]


def _owner_key(body: Mapping[str, Any]) -> Key | None:
    md = body.get("metadata") or {}
    name = (md.get("labels") or {}).get(res.MODEL_LABEL)
    return (str(md.get("namespace")), str(name)) if name else None


class _OwnedEventFilter(logging.Filter):
    """kopf logs every event handler's success at INFO; for pod/deployment pokes that is one
    line per pod status change, so those lines are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Handler 'owned' succeeded" not in record.getMessage()


def _quiet_owned_events() -> None:
    objects = logging.getLogger("kopf.objects")
    if not any(isinstance(f, _OwnedEventFilter) for f in objects.filters):
        objects.addFilter(_OwnedEventFilter())


def configure_kopf(kopf_settings: kopf.OperatorSettings, settings: OperatorSettings) -> None:
    """kopf's own settings: progress and diff-base in annotations (status stays ours and
    schema-checked), peering by random priority unless standalone, quiet kopf Events."""
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    kopf_settings.persistence.finalizer = f"{api.GROUP}/operator"
    kopf_settings.posting.level = logging.WARNING
    kopf_settings.peering.standalone = settings.standalone
    kopf_settings.peering.name = settings.peering_name
    kopf_settings.peering.clusterwide = settings.cluster_wide
    kopf_settings.peering.mandatory = not settings.standalone
    kopf_settings.posting.reporting_component = res.MANAGED_BY
    # No CRD watching (and so no RBAC for it): the CRD is installed before the operator.
    kopf_settings.scanning.disabled = True
    kopf_settings.execution.max_workers = 4
    kopf_settings.execution.default_backoff = 5
    kopf_settings.queueing.error_delays = (1, 2, 5, 10, 30)
    kopf_settings.networking.error_backoffs = (1, 2, 5, 10, 30)
    # Watches that end server-side now and then never hang silently on a dead connection.
    kopf_settings.watching.server_timeout = 300
    kopf_settings.watching.client_timeout = 330
    # The status subresource's writes come back as watch events of our own making.
    kopf_settings.persistence.consistency_timeout = 2.0


def register(
    settings: OperatorSettings, registry: kopf.OperatorRegistry | None = None
) -> tuple[kopf.OperatorRegistry, Reconciler]:
    """Build a registry with every handler (nothing is registered at import time)."""
    registry = registry if registry is not None else kopf.OperatorRegistry()
    _quiet_owned_events()
    rec = Reconciler(settings)
    msvc = (api.GROUP, api.VERSION, api.PLURAL)
    managed = {res.MANAGED_BY_LABEL: res.MANAGED_BY}

    @kopf.on.login(registry=registry, id="login")
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same sources as kube.py: in-cluster account, else $KUBECONFIG / ~/.kube/config.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.index(*msvc, registry=registry, id="msvc_index")
    def msvc_index(body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
        return {(body.metadata.namespace or "", body.metadata.name or ""): dict(body)}

    @kopf.index("", "v1", "pods", labels=managed, registry=registry, id="pod_index")
    def pod_index(body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]] | None:
        key = _owner_key(body)
        return {key: dict(body)} if key is not None else None

    @kopf.on.startup(registry=registry, id="startup")
    async def startup(**kwargs: Any) -> None:
        await rec.start()
        if settings.autoscaler.enabled and isinstance(rec.kube, Kube):
            # kopf passes every index to every handler, by id.
            source = IndexSource(kwargs["msvc_index"], kwargs["pod_index"])
            rec.autoscaler = Autoscaler(settings.autoscaler, source, rec.kube)
            rec.autoscaler.start()

    @kopf.on.cleanup(registry=registry, id="cleanup")
    async def cleanup(**_: Any) -> None:
        if rec.autoscaler is not None:
            await rec.autoscaler.stop()
        await rec.stop()

    @kopf.on.resume(*msvc, registry=registry, id="reconcile")
    @kopf.on.create(*msvc, registry=registry, id="reconcile")
    @kopf.on.update(*msvc, registry=registry, id="reconcile")
    async def reconcile(body: kopf.Body, logger: Log, **_: Any) -> None:
        try:
            await rec.sync(body, logger)
        except KubeError as exc:
            raise kopf.TemporaryError(str(exc), delay=5) from None
        rec.poke((body.metadata.namespace or "", body.metadata.name or ""))

    @kopf.daemon(*msvc, registry=registry, id="monitor", cancellation_timeout=5.0)
    async def monitor(body: kopf.Body, stopped: kopf.DaemonStopped, logger: Log, **_: Any) -> None:
        await rec.monitor(body, stopped, logger)

    @kopf.on.event("apps", "v1", "deployments", labels=managed, registry=registry, id="owned")
    @kopf.on.event("", "v1", "pods", labels=managed, registry=registry, id="owned")
    async def owned_changed(body: kopf.Body, **_: Any) -> None:
        key = _owner_key(body)
        if key is not None:
            rec.poke(key)

    return registry, rec
