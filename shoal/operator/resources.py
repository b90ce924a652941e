"""Pure builders: a ModelService spec -> the Kubernetes objects that serve it.

No I/O here. The handlers server-side-apply exactly what `desired_objects` returns, so every
field set here is owned by the operator's field manager (and drift in it is repaired).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from shoal.operator import spec as api
from shoal.operator.settings import FIELD_MANAGER, OperatorSettings

# The runtime contract (see `shoal serve`): port, health paths, command.
PORT = 8000
PORT_NAME = "http"
SERVICE_PORT = 80
# GET /metrics only (the runtime's SHOAL_METRICS_PORT): what the chart's NetworkPolicy opens to a
# Prometheus, so scraping never opens the inference port.
METRICS_PORT = 9090
METRICS_PORT_NAME = "metrics"
LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"
COMMAND = ["shoal", "serve"]
CONTAINER_NAME = "model"
TMP_VOLUME = "tmp"
MODEL_VOLUME = "model-store"
MODEL_MOUNT = "/mnt/models"
GPU_RESOURCE = "nvidia.com/gpu"
# Probed every second while starting: a replica that has loaded is noticed (and put into
# the gateway's rotation through its EndpointSlice) within about a second, which is what
# scale-from-zero waits on. The kubelet's probe is one GET of /v2/health/ready.
STARTUP_PERIOD_SECONDS = 1

# Labels: `serving.shoal.dev/model` selects a model's pods (and is what the gateway and the
# operator's own watches use); the app.kubernetes.io ones are for people and tools.
MODEL_LABEL = f"{api.GROUP}/model"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = FIELD_MANAGER


@dataclass(frozen=True)
class Owner:
    """The ModelService object the built objects belong to."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def selector_labels(name: str) -> dict[str, str]:
    return {MODEL_LABEL: name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def labels(name: str, settings: OperatorSettings) -> dict[str, str]:
    out = dict(settings.extra_labels)
    out.update(
        {
            "app.kubernetes.io/name": "shoal-model",
            "app.kubernetes.io/instance": name,
            "app.kubernetes.io/component": "model-server",
            MANAGED_BY_LABEL: MANAGED_BY,
        }
    )
    out.update(selector_labels(name))
    return out


def service_url(owner: Owner, settings: OperatorSettings) -> str:
    return f"http://{owner.name}.{owner.namespace}.svc.{settings.cluster_domain}"


def _metadata(owner: Owner, settings: OperatorSettings) -> dict[str, Any]:
    return {
        "name": owner.name,
        "namespace": owner.namespace,
        "labels": labels(owner.name, settings),
        "ownerReferences": [owner.reference()],
    }


def _pvc_source(uri: str) -> tuple[str, str]:
    """`pvc://claim/sub/path` -> (claim, `file:///mnt/models/sub/path`)."""
    rest = uri.removeprefix("pvc://")
    claim, _, sub = rest.partition("/")
    return claim, f"file://{MODEL_MOUNT}/{sub}".rstrip("/")


def container_env(
    spec: api.ModelServiceSpec, owner: Owner, settings: OperatorSettings, model_uri: str | None
) -> list[dict[str, Any]]:
    """The runtime's environment: the SHOAL_* contract first, then the user's variables."""
    uri = model_uri if model_uri is not None else spec.model.uri
    if uri is not None and uri.startswith("pvc://"):
        uri = _pvc_source(uri)[1]
    b = spec.batching
    env: list[dict[str, Any]] = []
    if spec.model.class_ is not None:
        env.append({"name": "SHOAL_MODEL_CLASS", "value": spec.model.class_})
    env.append({"name": "SHOAL_MODEL_NAME", "value": owner.name})
    if uri is not None:
        env.append({"name": "SHOAL_MODEL_URI", "value": uri})
    env += [
        {"name": "SHOAL_MODEL_CONFIG", "value": json.dumps(spec.model.config, sort_keys=True)},
        {"name": "SHOAL_HOST", "value": "0.0.0.0"},
        {"name": "SHOAL_PORT", "value": str(PORT)},
        {"name": "SHOAL_METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": "SHOAL_MAX_BATCH_SIZE", "value": str(b.max_batch_size)},
        {"name": "SHOAL_BATCH_WAIT_TIMEOUT_S", "value": _seconds(b.batch_wait_timeout_ms)},
        {"name": "SHOAL_MAX_QUEUE_SIZE", "value": str(b.max_queue_size)},
        {"name": "SHOAL_GRACE_PERIOD_S", "value": str(spec.drain.grace_period_seconds)},
        {"name": "SHOAL_DEVICE", "value": settings.gpu_device if spec.resources.gpu else "cpu"},
    ]
    if b.wait_mode is not None:  # unset: the model's own decorator decides
        env.append({"name": "SHOAL_BATCH_WAIT_MODE", "value": b.wait_mode})
    if settings.gateway_url:
        env.append({"name": "SHOAL_GATEWAY_URL", "value": settings.gateway_url})
    user_names = {e.name for e in spec.env}
    registry = uri is not None and uri.startswith(("models:/", "runs:/"))
    if registry and settings.mlflow_tracking_uri and "MLFLOW_TRACKING_URI" not in user_names:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": settings.mlflow_tracking_uri})
    for e in spec.env:
        item: dict[str, Any] = {"name": e.name}
        if e.value is not None:
            item["value"] = e.value
        if e.value_from is not None:
            item["valueFrom"] = e.value_from.model_dump(by_alias=True, exclude_none=True)
        env.append(item)
    return env


def _seconds(ms: float) -> str:
    return repr(ms / 1000.0)


def resource_requirements(spec: api.ModelServiceSpec) -> dict[str, Any]:
    r = spec.resources
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if r.cpu is not None:
        requests["cpu"] = str(r.cpu)
    if r.memory is not None:
        requests["memory"] = limits["memory"] = str(r.memory)
    if r.gpu > 0:
        limits[GPU_RESOURCE] = str(r.gpu)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def tolerations(spec: api.ModelServiceSpec) -> list[dict[str, Any]]:
    out = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.scheduling.tolerations]
    if spec.resources.gpu > 0:
        gpu = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        if gpu not in out:
            out.append(gpu)
    return out


def termination_grace_seconds(spec: api.ModelServiceSpec) -> int:
    """preStop delay + the runtime's drain budget + a margin for process exit."""
    return spec.drain.delay_seconds + spec.drain.grace_period_seconds + 5


def _probe(path: str, period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT_NAME, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
        "successThreshold": 1,
    }


SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _volumes(spec: api.ModelServiceSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container mounts): a writable /tmp, and the model's PVC when it has one."""
    mounts: list[dict[str, Any]] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": TMP_VOLUME, "emptyDir": {}}]
    if spec.model.uri is not None and spec.model.uri.startswith("pvc://"):
        claim = _pvc_source(spec.model.uri)[0]
        mounts.append({"name": MODEL_VOLUME, "mountPath": MODEL_MOUNT, "readOnly": True})
        volumes.append(
            {"name": MODEL_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
    return volumes, mounts


def container(
    spec: api.ModelServiceSpec,
    owner: Owner,
    settings: OperatorSettings,
    model_uri: str | None,
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    """The model server container: `shoal serve` with its environment, probes and limits."""
    h = spec.health
    out: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image or settings.default_image,
        "command": list(COMMAND),
        "env": container_env(spec, owner, settings, model_uri),
        "ports": [
            {"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"},
            {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # Startup covers process start + model load; only then do liveness/readiness count.
        "startupProbe": _probe(
            READY_PATH,
            STARTUP_PERIOD_SECONDS,
            math.ceil(h.startup_timeout_seconds / STARTUP_PERIOD_SECONDS),
            timeout=2,
        ),
        "readinessProbe": _probe(READY_PATH, h.readiness_period_seconds, 1, timeout=2),
        "livenessProbe": _probe(LIVE_PATH, h.liveness_period_seconds, 3, timeout=5),
        "securityContext": SECURITY_CONTEXT,
        "volumeMounts": mounts,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.drain.delay_seconds > 0:
        # Endpoints stop routing to a terminating pod asynchronously: keep serving meanwhile.
        out["lifecycle"] = {"preStop": {"sleep": {"seconds": spec.drain.delay_seconds}}}
    pull = spec.image_pull_policy or settings.image_pull_policy
    if pull is not None:
        out["imagePullPolicy"] = pull
    requirements = resource_requirements(spec)
    if requirements:
        out["resources"] = requirements
    return out


def pod_spec(
    spec: api.ModelServiceSpec, owner: Owner, settings: OperatorSettings, model_uri: str | None
) -> dict[str, Any]:
    """The pod around the container: identity, security, grace period and placement."""
    volumes, mounts = _volumes(spec)
    out: dict[str, Any] = {
        "serviceAccountName": owner.name,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace_seconds(spec),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container(spec, owner, settings, model_uri, mounts)],
        "volumes": volumes,
    }
    tols = tolerations(spec)
    if tols:
        out["tolerations"] = tols
    sched = spec.scheduling
    if sched.node_selector:
        out["nodeSelector"] = dict(sched.node_selector)
    if sched.affinity is not None:
        out["affinity"] = sched.affinity.model_dump(by_alias=True, exclude_none=True)
    if sched.priority_class_name:
        out["priorityClassName"] = sched.priority_class_name
    return out


def pod_template(
    spec: api.ModelServiceSpec, owner: Owner, settings: OperatorSettings, model_uri: str | None
) -> dict[str, Any]:
    return {
        "metadata": {"labels": labels(owner.name, settings)},
        "spec": pod_spec(spec, owner, settings, model_uri),
    }


def deployment(
    spec: api.ModelServiceSpec, owner: Owner, settings: OperatorSettings, model_uri: str | None
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, settings),
        "spec": {
            "replicas": spec.desired_replicas(),
            "selector": {"matchLabels": selector_labels(owner.name)},
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxSurge": spec.rollout.max_surge,
                    "maxUnavailable": spec.rollout.max_unavailable,
                },
            },
            "template": pod_template(spec, owner, settings, model_uri),
        },
    }


def service(owner: Owner, settings: OperatorSettings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, settings),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner.name),
            "ports": [
                {
                    "name": PORT_NAME,
                    "port": SERVICE_PORT,
                    "targetPort": PORT_NAME,
                    "protocol": "TCP",
                },
                {
                    "name": METRICS_PORT_NAME,
                    "port": METRICS_PORT,
                    "targetPort": METRICS_PORT_NAME,
                    "protocol": "TCP",
                },
            ],
        },
    }


def pod_disruption_budget(owner: Owner, settings: OperatorSettings) -> dict[str, Any]:
    # maxUnavailable (not minAvailable) so a single-replica model never blocks a node drain.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, settings),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(owner.name)}},
    }


def service_account(owner: Owner, settings: OperatorSettings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(owner, settings),
        "automountServiceAccountToken": False,
    }


def desired_objects(
    spec: api.ModelServiceSpec,
    owner: Owner,
    settings: OperatorSettings,
    *,
    model_uri: str | None = None,
) -> list[dict[str, Any]]:
    """Every object a ModelService needs, in apply order (the pods' ServiceAccount first).

    `model_uri` overrides `spec.model.uri` (a registry alias resolved to a version).
    """
    return [
        service_account(owner, settings),
        service(owner, settings),
        pod_disruption_budget(owner, settings),
        deployment(spec, owner, settings, model_uri),
    ]
