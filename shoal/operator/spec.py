"""The ModelService API: the single source of truth for the CRD schema (see crdgen.py).

Every field has a description and its constraints; rules that span fields are CEL rules
(`x-kubernetes-validations`) so the API server rejects them at `kubectl apply`, and the same rules
are checked here by pydantic so the operator never acts on a spec the schema would refuse.
Defaults live here, not in the CRD: the operator fills them in (some come from its settings).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from shoal.operator.spec_pod import (
    Affinity,
    EnvVarSource,
    LabelValue,
    check_label_keys,
    label_map,
)

GROUP = "serving.shoal.dev"
VERSION = "v1alpha1"
KIND = "ModelService"
PLURAL = "modelservices"
SINGULAR = "modelservice"
SHORT_NAMES = ["msvc"]
API_VERSION = f"{GROUP}/{VERSION}"

DEFAULT_REPLICAS = 1
DEFAULT_MIN_REPLICAS = 1
DEFAULT_MAX_REPLICAS = 8
DEFAULT_MAX_SURGE: int | str = 1
DEFAULT_MAX_UNAVAILABLE: int | str = 0

# A non-negative Kubernetes quantity (resource.Quantity's pattern without the sign).
_DECIMAL = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY_PATTERN = rf"^{_DECIMAL}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_DECIMAL}))?$"
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
IMPORT_PATH_PATTERN = rf"^{_DOTTED}:{_DOTTED}$"
# file:///abs, /abs, pvc://claim/path, models:/name/version, models:/name@alias, runs:/id/path
MODEL_URI_PATTERN = (
    r"^(file:///.*|/.*|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?"
    r"|models:/[^/@\s]+(/[0-9]+|@[A-Za-z0-9_-]+)|runs:/[^/\s]+/.+)$"
)
# A string int-or-percent must be a percentage: Deployments refuse the string "0".
INT_OR_PERCENT_PATTERN = r"^[0-9]+%$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

# int-or-string types: the CRD generator turns `anyOf: [integer, string]` into
# `x-kubernetes-int-or-string` and lifts the string pattern next to it.
Quantity = (
    Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=64)]
)
# strict: "0" is a string here, not an int by coercion (the API server sees a string too).
IntOrPercent = (
    Annotated[int, Field(ge=0, strict=True)] | Annotated[str, Field(pattern=INT_OR_PERCENT_PATTERN)]
)
# The runtime settings the operator sets from the spec; other SHOAL_* variables (SHOAL_LOG_LEVEL,
# SHOAL_REQUEST_TIMEOUT_S, ...) are the user's to set through `env`.
RESERVED_ENV_NAMES = (
    "SHOAL_MODEL_CLASS",
    "SHOAL_MODEL_NAME",
    "SHOAL_MODEL_URI",
    "SHOAL_MODEL_CONFIG",
    "SHOAL_HOST",
    "SHOAL_PORT",
    "SHOAL_METRICS_PORT",
    "SHOAL_MAX_BATCH_SIZE",
    "SHOAL_BATCH_WAIT_TIMEOUT_S",
    "SHOAL_BATCH_WAIT_MODE",
    "SHOAL_MAX_QUEUE_SIZE",
    "SHOAL_GRACE_PERIOD_S",
    "SHOAL_DEVICE",
    "SHOAL_GATEWAY_URL",
)
RESERVED_ENV_MESSAGE = "env names set by the operator are reserved: " + ", ".join(
    RESERVED_ENV_NAMES
)


class _Spec(BaseModel):
    """Base for every API type: camelCase on the wire, unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class ModelSource(_Spec):
    """Which model class to serve and where its weights come from."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.class) || (has(self.uri) && "
                    "(self.uri.startsWith('models:/') || self.uri.startsWith('runs:/')))",
                    "message": "model.class is required unless model.uri is an MLflow "
                    "registry URI (models:/ or runs:/), which is served as a pyfunc",
                }
            ]
        }
    )

    class_: str | None = Field(
        default=None,
        alias="class",
        min_length=3,
        max_length=253,
        pattern=IMPORT_PATH_PATTERN,
        description=(
            "Import path of the model class or function, `module:Attribute` "
            "(e.g. `examples.iris:LogisticIris`); the runtime imports it in every replica. "
            "May be omitted for an MLflow `models:/` or `runs:/` URI (served as a pyfunc)."
        ),
    )
    uri: str | None = Field(
        default=None,
        max_length=2048,
        pattern=MODEL_URI_PATTERN,
        description=(
            "Where the model loads its weights from, passed to the class as `uri`: "
            "`file:///path` or `/path` (inside the image), `pvc://<claim>/<path>` (the claim is "
            "mounted read-only), `models:/<name>/<version>` or `models:/<name>@<alias>` (MLflow "
            "registry; an alias is resolved by the operator and recorded in status, and a moved "
            "alias rolls the replicas), or `runs:/<run>/<path>`."
        ),
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for the model class's constructor (free-form JSON object).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    @model_validator(mode="after")
    def _class_or_registry(self) -> ModelSource:
        registry = self.uri is not None and self.uri.startswith(("models:/", "runs:/"))
        if self.class_ is None and not registry:
            raise ValueError(
                "model.class is required unless model.uri is an MLflow registry URI "
                "(models:/ or runs:/), which is served as a pyfunc"
            )
        return self


class Batching(_Spec):
    """Opportunistic batching and the bounded request queue of each replica."""

    max_batch_size: int = Field(
        default=32, ge=1, le=4096, description="Most requests (rows) run in one model call."
    )
    batch_wait_timeout_ms: float = Field(
        default=5.0,
        ge=0,
        le=60_000,
        description="Longest wait, after the first queued request, for a batch to fill (ms).",
    )
    max_queue_size: int = Field(
        default=256,
        ge=1,
        le=1_000_000,
        description="Requests queued per replica before it answers 503 with Retry-After.",
    )
    wait_mode: Literal["hard", "adaptive"] | None = Field(
        default=None,
        description=(
            "`hard`: a short batch always waits batchWaitTimeoutMs for more requests (Ray "
            "Serve's rule). `adaptive`: with the model idle, it waits only while the measured "
            "arrival rate can fill the batch, so a lone request goes at once. Unset: the "
            "model's `@shoal.batch(batch_wait_mode=...)`, else the runtime's default."
        ),
    )


class Resources(_Spec):
    """Compute for each replica. Memory is both request and limit; CPU is a request only."""

    cpu: Quantity | None = Field(
        default=None,
        description="CPU request per replica, a Kubernetes quantity (e.g. `2` or `500m`).",
    )
    memory: Quantity | None = Field(
        default=None,
        description="Memory request and limit per replica, a Kubernetes quantity (e.g. `4Gi`).",
    )
    gpu: int = Field(
        default=0,
        ge=0,
        le=16,
        description=(
            "NVIDIA GPUs per replica: sets the `nvidia.com/gpu` limit, tolerates the "
            "`nvidia.com/gpu` NoSchedule taint and runs the model on `cuda`."
        ),
    )


class Toleration(_Spec):
    """A Kubernetes pod toleration."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.operator) && self.operator == 'Exists'"
                    " && has(self.value) && self.value != '')",
                    "message": "a toleration with operator Exists takes no value",
                }
            ]
        }
    )

    key: str | None = Field(default=None, max_length=316, description="Taint key to tolerate.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="`Exists` or `Equal` (the default)."
    )
    value: str | None = Field(
        default=None, max_length=63, description="Taint value, for the `Equal` operator."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty tolerates all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="How long a NoExecute taint is tolerated."
    )

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        return self


class Scheduling(_Spec):
    """Where replicas may run, on top of the GPU placement the operator adds."""

    node_selector: dict[str, LabelValue] = label_map("Node labels every replica's node must carry.")
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Extra tolerations for the replicas."
    )
    affinity: Affinity | None = Field(
        default=None, description="A Kubernetes pod `affinity`, copied into the pod template."
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the replicas."
    )

    _keys = field_validator("node_selector")(check_label_keys)


class Autoscaling(_Spec):
    """Queue-depth autoscaling. Present means on: the autoscaler writes `spec.replicas`
    (through the scale subresource) and the operator keeps it within these bounds."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": (
                        f"(has(self.minReplicas) ? self.minReplicas : {DEFAULT_MIN_REPLICAS})"
                        f" <= (has(self.maxReplicas) ? self.maxReplicas : {DEFAULT_MAX_REPLICAS})"
                    ),
                    "message": "minReplicas must be less than or equal to maxReplicas",
                }
            ]
        }
    )

    min_replicas: int = Field(
        default=DEFAULT_MIN_REPLICAS,
        ge=0,
        le=1000,
        description="Fewest replicas; 0 allows scale to zero after the idle delay.",
    )
    max_replicas: int = Field(
        default=DEFAULT_MAX_REPLICAS, ge=1, le=1000, description="Most replicas."
    )
    target_queue_depth: float = Field(
        default=4.0,
        gt=0,
        le=100_000,
        description="Queued plus in-flight requests per replica the autoscaler aims for.",
    )
    scale_down_delay_seconds: int = Field(
        default=60,
        ge=0,
        le=86_400,
        description="How long demand must stay low before replicas are removed.",
    )
    scale_to_zero_delay_seconds: int = Field(
        default=300,
        ge=0,
        le=86_400,
        description=(
            "With minReplicas 0: how long the model must see no request at all (none queued, "
            "in flight or held by a gateway) before its last replica is removed."
        ),
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must be less than or equal to maxReplicas")
        return self


class Rollout(_Spec):
    """How a changed spec replaces replicas. The defaults add before they remove, so a
    rollout never drops serving capacity."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": (
                        "!(has(self.maxSurge) && has(self.maxUnavailable)"
                        " && string(self.maxSurge) in ['0', '0%']"
                        " && string(self.maxUnavailable) in ['0', '0%'])"
                    ),
                    "message": "maxSurge and maxUnavailable must not both be zero",
                }
            ]
        }
    )

    max_surge: IntOrPercent = Field(
        default=DEFAULT_MAX_SURGE,
        description="Extra replicas during a rollout: a count or a percentage (e.g. `25%`).",
    )
    max_unavailable: IntOrPercent = Field(
        default=DEFAULT_MAX_UNAVAILABLE,
        description="Replicas that may be unavailable during a rollout (default 0: none).",
    )
    progress_deadline_seconds: int = Field(
        default=600,
        ge=10,
        le=86_400,
        description="A rollout that makes no progress this long is reported as failed.",
    )

    @model_validator(mode="after")
    def _not_both_zero(self) -> Rollout:
        if str(self.max_surge) in ("0", "0%") and str(self.max_unavailable) in ("0", "0%"):
            raise ValueError("maxSurge and maxUnavailable must not both be zero")
        return self


class Health(_Spec):
    """Probe budgets: a slow model load is not a failure until the startup budget runs out."""

    startup_timeout_seconds: int = Field(
        default=600,
        ge=5,
        le=86_400,
        description="Budget for process start plus model load before the replica is restarted.",
    )
    readiness_period_seconds: int = Field(
        default=2, ge=1, le=60, description="How often readiness is probed once started."
    )
    liveness_period_seconds: int = Field(
        default=10, ge=1, le=300, description="How often liveness is probed once started."
    )


class Drain(_Spec):
    """Graceful scale-in and rollout: how a replica leaves without failing requests."""

    delay_seconds: int = Field(
        default=3,
        ge=0,
        le=120,
        description=(
            "Wait in preStop before SIGTERM, while endpoints stop routing to the replica."
        ),
    )
    grace_period_seconds: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="After SIGTERM, time to finish queued and in-flight requests.",
    )


class EnvVar(_Spec):
    """An extra environment variable for the model process."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.value) && has(self.valueFrom))",
                    "message": "an env var takes value or valueFrom, not both",
                }
            ]
        }
    )

    name: str = Field(
        min_length=1, max_length=253, pattern=ENV_NAME_PATTERN, description="Variable name."
    )
    value: str | None = Field(default=None, max_length=32_768, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        default=None,
        description="A Kubernetes `valueFrom` source (secretKeyRef, configMapKeyRef, fieldRef, "
        "resourceFieldRef).",
    )

    @model_validator(mode="after")
    def _value_or_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("an env var takes value or valueFrom, not both")
        return self


class ModelServiceSpec(_Spec):
    """Desired state of a served model."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": (
                        "!has(self.env) || self.env.all(e, !(e.name in ["
                        + ", ".join(f"'{n}'" for n in RESERVED_ENV_NAMES)
                        + "]))"
                    ),
                    "message": RESERVED_ENV_MESSAGE,
                },
                {
                    "rule": (
                        "!has(self.autoscaling) || !has(self.replicas) || ("
                        "self.replicas >= (has(self.autoscaling.minReplicas) ? "
                        f"self.autoscaling.minReplicas : {DEFAULT_MIN_REPLICAS}) && "
                        "self.replicas <= (has(self.autoscaling.maxReplicas) ? "
                        f"self.autoscaling.maxReplicas : {DEFAULT_MAX_REPLICAS}))"
                    ),
                    "message": "replicas must be within autoscaling minReplicas..maxReplicas",
                },
            ]
        }
    )

    model: ModelSource = Field(description="The model class, its URI and constructor config.")
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        pattern=r"^[^\s]+$",
        description="Runtime image; defaults to the operator's `defaultImage` setting.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Image pull policy of the replicas."
    )
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description=(
            "Replica count (the scale subresource's target). Defaults to 1, or to "
            "autoscaling.minReplicas when autoscaling is on."
        ),
    )
    batching: Batching = Field(default_factory=Batching, description="Batching and queue knobs.")
    resources: Resources = Field(default_factory=Resources, description="CPU, memory and GPUs.")
    scheduling: Scheduling = Field(
        default_factory=Scheduling, description="Node selection and tolerations."
    )
    autoscaling: Autoscaling | None = Field(
        default=None, description="Queue-depth autoscaling bounds; absent means a fixed count."
    )
    rollout: Rollout = Field(default_factory=Rollout, description="Rolling update limits.")
    health: Health = Field(default_factory=Health, description="Probe timing and load budget.")
    drain: Drain = Field(default_factory=Drain, description="Graceful shutdown timing.")
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description="Extra environment variables (the names the operator sets, "
        "SHOAL_MODEL_*, SHOAL_HOST, SHOAL_PORT, batching, SHOAL_DEVICE, SHOAL_GATEWAY_URL, are "
        "reserved; other SHOAL_* runtime settings such as SHOAL_LOG_LEVEL may be set).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @model_validator(mode="after")
    def _cross_field(self) -> ModelServiceSpec:
        names = [e.name for e in self.env]
        if any(n in RESERVED_ENV_NAMES for n in names):
            raise ValueError(RESERVED_ENV_MESSAGE)
        if len(set(names)) != len(names):
            raise ValueError("env names must be unique")
        if self.autoscaling is not None and self.replicas is not None:
            lo, hi = self.autoscaling.min_replicas, self.autoscaling.max_replicas
            if not lo <= self.replicas <= hi:
                raise ValueError("replicas must be within autoscaling minReplicas..maxReplicas")
        return self

    def desired_replicas(self) -> int:
        """The Deployment's replica count: spec.replicas, else the floor of the bounds."""
        if self.autoscaling is None:
            return DEFAULT_REPLICAS if self.replicas is None else self.replicas
        if self.replicas is None:
            return self.autoscaling.min_replicas
        return min(max(self.replicas, self.autoscaling.min_replicas), self.autoscaling.max_replicas)


class Condition(_Spec):
    """A status condition, as in metav1.Condition."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="One CamelCase word: why.")
    message: str = Field(default="", max_length=32_768, description="What is wrong, for people.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The spec generation this condition was computed from."
    )


class ModelServiceStatus(_Spec):
    """Observed state, written by the operator (and queueDepth by the autoscaler)."""

    observed_generation: int | None = Field(
        default=None, description="Latest spec generation the operator acted on."
    )
    replicas: int | None = Field(default=None, description="Replica pods that exist.")
    ready_replicas: int | None = Field(default=None, description="Replica pods that are ready.")
    updated_replicas: int | None = Field(
        default=None, description="Replica pods that run the current spec."
    )
    desired_replicas: int | None = Field(
        default=None, description="Replicas the operator asked for."
    )
    queue_depth: float | None = Field(
        default=None, description="Queued plus in-flight requests (written by the autoscaler)."
    )
    url: str | None = Field(default=None, description="In-cluster URL of the model's Service.")
    selector: str | None = Field(
        default=None, description="Label selector of the replica pods (for the scale subresource)."
    )
    model_uri: str | None = Field(
        default=None, description="The model URI the replicas load (registry aliases resolved)."
    )
    model_version: str | None = Field(
        default=None, description="Registry version an alias resolved to."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing, Scheduled, ModelLoadFailed, Degraded, ModelResolved.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def validate_name(name: str) -> None:
    """Object names become Service names (DNS-1035 labels), so they are held to that."""
    if len(name) > 63 or not _DNS_1035_LABEL.match(name):
        raise ValueError(
            f"name {name!r} must be a DNS-1035 label: a-z, 0-9 and '-', starting with a letter, "
            "at most 63 characters"
        )


def parse_spec(raw: Any) -> ModelServiceSpec:
    """Parse a spec as it comes from the API server; raises pydantic.ValidationError."""
    return ModelServiceSpec.model_validate(raw)
