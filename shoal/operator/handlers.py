"""The kopf layer: watches that feed the reconciler's index and queue, nothing more.

kopf holds no per-object state here: no spec handlers (so no last-handled-configuration
annotation, whose size limit once made a large spec fail), no daemons or timers (so no finalizer:
deleting a ModelService or its namespace never waits for the operator). Owned kinds are watched
with a server-side label selector (`app.kubernetes.io/managed-by=shoal-operator`) into kopf
indices, which kopf fills from its initial listings before any handler runs, so the first passes
after a start already see every owned object. Every event pokes the owning ModelService's
queue entry (`reconciler.py` does the work).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from shoal.operator import resources
from shoal.operator.index import Key
from shoal.operator.reconciler import Reconciler
from shoal.operator.settings import OperatorSettings
from shoal.operator.spec import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

MANAGED_SELECTOR = f"{resources.MANAGED_BY_LABEL}={resources.MANAGED_BY}"
# (group, version, plural, kind) of what a ModelService owns; pods are read for status.
OWNED = (
    ("", "v1", "serviceaccounts", "ServiceAccount"),
    ("", "v1", "services", "Service"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ("apps", "v1", "deployments", "Deployment"),
)
PODS = ("", "v1", "pods")


def _owner_of_pod(body: kopf.Body) -> Key | None:
    name = (body.metadata.labels or {}).get(resources.MODEL_LABEL)
    return (body.metadata.namespace or "", name) if name else None


def _plain(body: kopf.Body) -> dict[str, Any]:
    # kopf bodies are views over the raw event; the index keeps plain dicts.
    return {k: body[k] for k in body}


class _QuietHandlers(logging.Filter):
    """kopf logs every event handler's success at INFO: one line per pod status change and
    per status write. Those lines are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Handler '") and msg.endswith("' succeeded."))


class _PeeringPause(logging.Handler):
    """kopf pauses its watches when a replica with a higher priority is alive, and says so only
    in its log; the reconciler's own workers and resync timers pause with it."""

    def __init__(self, rec: Reconciler) -> None:
        super().__init__(logging.INFO)
        self.rec = rec

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Pausing"):
            self.rec.paused = True
        elif msg.startswith("Resuming operations"):
            self.rec.paused = False


def configure_kopf(kopf_settings: kopf.OperatorSettings, settings: OperatorSettings) -> None:
    """kopf's own settings: server-side label selectors on owned kinds, peering by random
    priority unless standalone, quiet kopf Events."""
    for group, _version, plural, *_ in (*OWNED, PODS):
        kopf_settings.watching.label_selectors[group, plural] = MANAGED_SELECTOR
    # Earlier versions put this finalizer on every ModelService; kopf removes a finalizer of its
    # name that no handler needs any more, so upgraded objects lose it on the first event.
    kopf_settings.persistence.finalizer = f"{GROUP}/operator"
    kopf_settings.posting.level = logging.WARNING
    kopf_settings.peering.standalone = settings.standalone
    kopf_settings.peering.name = settings.peering_name
    kopf_settings.peering.clusterwide = settings.cluster_wide
    kopf_settings.peering.mandatory = not settings.standalone
    # A replica that died is replaced after at most this long (kopf's default is 60 s).
    kopf_settings.peering.lifetime = settings.peering_lifetime_seconds
    kopf_settings.posting.reporting_component = resources.MANAGED_BY
    # No CRD watching (and so no RBAC for it): the CRD is installed before the operator.
    kopf_settings.scanning.disabled = True
    kopf_settings.execution.max_workers = 4
    kopf_settings.queueing.error_delays = (1, 2, 5, 10, 30)
    kopf_settings.networking.error_backoffs = (1, 2, 5, 10, 30)
    # Watches that end server-side now and then never hang silently on a dead connection.
    kopf_settings.watching.server_timeout = 300
    kopf_settings.watching.client_timeout = 330


def register(
    settings: OperatorSettings, registry: kopf.OperatorRegistry | None = None
) -> tuple[kopf.OperatorRegistry, Reconciler]:
    """Build a registry with every handler (nothing is registered at import time)."""
    registry = registry if registry is not None else kopf.OperatorRegistry()
    rec = Reconciler(settings)
    objects = logging.getLogger("kopf.objects")
    if not any(isinstance(f, _QuietHandlers) for f in objects.filters):
        objects.addFilter(_QuietHandlers())
    pause = _PeeringPause(rec)

    @kopf.on.login(registry=registry, id="login")
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same order as kube.py: in-cluster account, else $KUBECONFIG / ~/.kube/config.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry, id="startup")
    async def startup(**kwargs: Any) -> None:
        for *_, kind in OWNED:
            rec.index.attach(kind, kwargs[f"{kind.lower()}_index"])
        rec.index.attach_pods(kwargs["pod_index"])
        peering_log = logging.getLogger("kopf._core.engines.peering")
        peering_log.addHandler(pause)
        if not peering_log.isEnabledFor(logging.INFO):  # the pause is only said at INFO
            peering_log.setLevel(logging.INFO)
        await rec.start()

    @kopf.on.cleanup(registry=registry, id="cleanup")
    async def cleanup(**_: Any) -> None:
        logging.getLogger("kopf._core.engines.peering").removeHandler(pause)
        await rec.stop()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="modelservice")
    async def modelservice(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        rec.observe_modelservice(event.get("type"), _plain(body))

    for group, version, plural, kind in OWNED:
        kopf.index(group, version, plural, registry=registry, id=f"{kind.lower()}_index")(
            lambda body, **_: {(body.metadata.namespace, body.metadata.name): _plain(body)}
        )

        @kopf.on.event(group, version, plural, registry=registry, id=f"{kind.lower()}_event")
        async def owned(body: kopf.Body, **_: Any) -> None:
            rec.poke((body.metadata.namespace or "", body.metadata.name or ""))

    @kopf.index(*PODS, registry=registry, id="pod_index")
    def pod_index(body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]] | None:
        key = _owner_of_pod(body)
        return {key: _plain(body)} if key is not None else None

    @kopf.on.event(*PODS, registry=registry, id="pod_event")
    async def pod(body: kopf.Body, **_: Any) -> None:
        key = _owner_of_pod(body)
        if key is not None:
            rec.poke(key)

    return registry, rec
