"""Operator settings: one typed object, built in main() from flags and environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from shoal.operator.autoscaler import settings as autoscaler_settings
from shoal.operator.autoscaler.settings import AutoscalerSettings

DEFAULT_IMAGE = "ghcr.io/shoal-dev/shoal:0.1.0"
FIELD_MANAGER = "shoal-operator"


@dataclass(frozen=True)
class OperatorSettings:
    """Everything the operator's behaviour depends on besides the ModelService objects."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means cluster-wide."""
    default_image: str = DEFAULT_IMAGE
    """Runtime image for ModelServices that name none."""
    image_pull_policy: str | None = None
    """Pull policy for replicas that do not set one (None: Kubernetes' default)."""
    cluster_domain: str = "cluster.local"
    """DNS suffix used in status.url."""
    run_as_user: int = 1000
    """UID the replica processes run as (the image's non-root user)."""
    gpu_device: str = "cuda"
    """SHOAL_DEVICE for replicas that get GPUs (`auto`: the runtime picks, e.g. where GPU
    nodes are simulated, as in the e2e harness)."""
    mlflow_tracking_uri: str | None = None
    """MLflow tracking/registry URI for resolving `models:/name@alias`; also given to replicas
    that load from the registry (as MLFLOW_TRACKING_URI) unless their env sets it."""
    gateway_url: str | None = None
    """Address of the Shoal gateway, given to every replica as SHOAL_GATEWAY_URL so that
    `shoal.handle("other-model")` inside a model reaches the other model's replicas."""
    alias_poll_seconds: float = 30.0
    """How often registry aliases are re-resolved (a moved alias rolls the replicas)."""
    resync_seconds: float = 600.0
    """Longest time between two passes over one ModelService (±20 % jitter). Drift is repaired
    on the watch event that shows it; the resync is only a safety net."""
    log_format: str = "plain"
    """`plain` or `json`."""
    verbose: bool = False
    """Debug logging."""
    liveness_endpoint: str | None = "http://0.0.0.0:8080/healthz"
    """Where kopf answers liveness probes (None: off). The gateway's default port is 8080 too:
    beside it, give one of them another port (`--liveness`, `shoal gateway --port`)."""
    standalone: bool = False
    """Skip kopf peering (one operator only; tests)."""
    peering_name: str = "shoal-operator"
    """KopfPeering object shared by the operator's replicas: only the highest priority acts."""
    priority: int | None = None
    """Peering priority; None: from the start time, oldest highest (cli.start_priority)."""
    peering_lifetime_seconds: int = 15
    """How long a silent replica counts as alive in the peering object: the longest a standby
    waits after the active replica died (kopf's default is 60)."""
    post_events: bool = True
    """Post Kubernetes Events for condition transitions."""
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    """Labels added to every object the operator creates."""
    autoscaler: AutoscalerSettings = field(default_factory=AutoscalerSettings)
    """The autoscaler loop (SHOAL_OPERATOR_AUTOSCALER_*)."""

    @property
    def cluster_wide(self) -> bool:
        return not self.namespaces


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(s.strip() for s in (value or "").split(",") if s.strip())


def from_env(env: Mapping[str, str] | None = None) -> OperatorSettings:
    """Settings from SHOAL_OPERATOR_* variables (flags override these in cli.py)."""
    env = os.environ if env is None else env
    base = OperatorSettings()

    def get_float(name: str, default: float) -> float:
        raw = env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a number") from None

    def get_int(name: str) -> int | None:
        raw = env.get(name)
        if not raw:
            return None
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not an integer") from None

    run_as_user = get_int("SHOAL_OPERATOR_RUN_AS_USER")
    return OperatorSettings(
        namespaces=_split(env.get("SHOAL_OPERATOR_NAMESPACES")),
        default_image=env.get("SHOAL_OPERATOR_DEFAULT_IMAGE") or base.default_image,
        image_pull_policy=env.get("SHOAL_OPERATOR_IMAGE_PULL_POLICY") or None,
        cluster_domain=env.get("SHOAL_OPERATOR_CLUSTER_DOMAIN") or base.cluster_domain,
        run_as_user=base.run_as_user if run_as_user is None else run_as_user,
        gpu_device=env.get("SHOAL_OPERATOR_GPU_DEVICE") or base.gpu_device,
        mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
        gateway_url=env.get("SHOAL_OPERATOR_GATEWAY_URL") or None,
        alias_poll_seconds=get_float("SHOAL_OPERATOR_ALIAS_POLL_SECONDS", base.alias_poll_seconds),
        resync_seconds=get_float("SHOAL_OPERATOR_RESYNC_SECONDS", base.resync_seconds),
        log_format=env.get("SHOAL_OPERATOR_LOG_FORMAT") or base.log_format,
        liveness_endpoint=env.get("SHOAL_OPERATOR_LIVENESS", base.liveness_endpoint) or None,
        standalone=env.get("SHOAL_OPERATOR_STANDALONE", "") in ("1", "true", "yes"),
        priority=get_int("SHOAL_OPERATOR_PRIORITY"),
        autoscaler=autoscaler_settings.from_env(env),
    )
