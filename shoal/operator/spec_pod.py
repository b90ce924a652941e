"""Kubernetes pod fields that a ModelService passes through (affinity, env `valueFrom`, label
maps), typed, so that `kubectl apply` refuses what the Deployment would refuse later (an affinity
operator `Bogus`, a nodeSelector key `bad key!`): before these types, such specs were admitted
and then failed as ApplyFailed. Field names and rules follow core/v1."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

# A qualified name (label key): an optional DNS subdomain prefix and '/', then a name part.
_NAME_PART = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY_PATTERN = rf"^({_PREFIX}/)?{_NAME_PART}$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)

LabelValue = Annotated[
    str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN, description="A label value.")
]
_Value = Annotated[str, Field(max_length=63, description="A value.")]
_Key = Annotated[str, Field(max_length=316, description="A label key.")]
LABEL_MAP_RULE: dict[str, Any] = {
    # A CEL raw string: the pattern's backslashes stay as they are.
    "rule": f"self.all(k, size(k) <= 316 && k.matches(r'{LABEL_KEY_PATTERN}'))",
    "message": "keys must be label keys: [prefix/]name, name of 1-63 of [A-Za-z0-9-_.] "
    "starting and ending alphanumeric",
}


def check_label_keys(value: dict[str, str]) -> dict[str, str]:
    bad = [k for k in value if len(k) > 316 or not _LABEL_KEY.match(k)]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a label key: {LABEL_MAP_RULE['message']}")
    return value


def label_map(description: str) -> Any:
    """A label map field: at most 64 entries, keys checked by CEL (structural schemas have no
    `propertyNames`), values by pattern."""
    return Field(
        default_factory=dict,
        max_length=64,
        description=description,
        json_schema_extra={"x-kubernetes-validations": [LABEL_MAP_RULE]},
    )


class _K8s(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class NodeSelectorRequirement(_K8s):
    """A node label (or field) test."""

    key: str = Field(max_length=316, description="The label key the test applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        description="In, NotIn, Exists, DoesNotExist, Gt or Lt."
    )
    values: list[_Value] | None = Field(
        default=None, max_length=64, description="Values for In/NotIn (one integer for Gt/Lt)."
    )


class NodeSelectorTerm(_K8s):
    """Requirements that a node must all meet."""

    match_expressions: list[NodeSelectorRequirement] | None = Field(
        default=None, max_length=32, description="Tests on node labels."
    )
    match_fields: list[NodeSelectorRequirement] | None = Field(
        default=None, max_length=32, description="Tests on node fields."
    )


class NodeSelector(_K8s):
    """Terms of which a node must meet at least one."""

    node_selector_terms: list[NodeSelectorTerm] = Field(
        max_length=32, description="The terms (ORed)."
    )


class PreferredSchedulingTerm(_K8s):
    """A weighted node preference."""

    weight: int = Field(ge=1, le=100, description="Weight, 1-100.")
    preference: NodeSelectorTerm = Field(description="The node term preferred.")


class NodeAffinity(_K8s):
    """Node affinity."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        default=None, description="Nodes a replica must run on."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = (
        Field(default=None, max_length=32, description="Nodes a replica prefers.")
    )


class LabelSelectorRequirement(_K8s):
    """A label test."""

    key: str = Field(max_length=316, description="The label key the test applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[LabelValue] | None = Field(
        default=None, max_length=64, description="Values for In/NotIn."
    )


class LabelSelector(_K8s):
    """A label selector."""

    match_labels: dict[str, LabelValue] = label_map("Labels that must all match.")
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=32, description="Label tests that must all pass."
    )

    _keys = field_validator("match_labels")(check_label_keys)


class PodAffinityTerm(_K8s):
    """Pods (by label) whose nodes, grouped by a topology key, attract or repel."""

    label_selector: LabelSelector | None = Field(default=None, description="The pods.")
    namespaces: list[_Value] | None = Field(
        default=None, max_length=32, description="Namespaces of those pods (default: this one)."
    )
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces of those pods, by label."
    )
    topology_key: str = Field(
        min_length=1, max_length=316, description="Node label that defines a topology domain."
    )
    match_label_keys: list[_Key] | None = Field(
        default=None, max_length=32, description="Pod label keys merged into the selector."
    )
    mismatch_label_keys: list[_Key] | None = Field(
        default=None, max_length=32, description="Pod label keys negated into the selector."
    )


class WeightedPodAffinityTerm(_K8s):
    """A weighted pod affinity term."""

    weight: int = Field(ge=1, le=100, description="Weight, 1-100.")
    pod_affinity_term: PodAffinityTerm = Field(description="The term.")


class PodAffinity(_K8s):
    """Pod affinity or anti-affinity."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] | None = Field(
        default=None, max_length=32, description="Terms a replica's node must meet."
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] | None = (
        Field(default=None, max_length=32, description="Terms a replica's node should meet.")
    )


class Affinity(_K8s):
    """A Kubernetes pod `affinity`, copied into the pod template."""

    node_affinity: NodeAffinity | None = Field(default=None, description="Node affinity.")
    pod_affinity: PodAffinity | None = Field(default=None, description="Pod affinity.")
    pod_anti_affinity: PodAffinity | None = Field(default=None, description="Pod anti-affinity.")


class KeyRef(_K8s):
    """A key of a Secret or ConfigMap."""

    name: str = Field(min_length=1, max_length=253, description="The object's name.")
    key: str = Field(min_length=1, max_length=253, description="The key.")
    optional: bool | None = Field(default=None, description="Whether it may be missing.")


class FieldRef(_K8s):
    """A field of the pod (downward API)."""

    field_path: str = Field(min_length=1, max_length=256, description="e.g. `status.podIP`.")
    api_version: str | None = Field(default=None, max_length=64, description="Usually `v1`.")


class ResourceFieldRef(_K8s):
    """A container's resource request or limit."""

    resource: str = Field(min_length=1, max_length=64, description="e.g. `limits.memory`.")
    container_name: str | None = Field(default=None, max_length=63, description="Container.")
    divisor: int | str | None = Field(default=None, description="Unit of the value.")


ONE_SOURCE = "valueFrom needs exactly one of secretKeyRef, configMapKeyRef, fieldRef, " + (
    "resourceFieldRef"
)


class EnvVarSource(_K8s):
    """Where a variable's value comes from: exactly one source."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "[has(self.secretKeyRef), has(self.configMapKeyRef),"
                    " has(self.fieldRef), has(self.resourceFieldRef)]"
                    ".filter(x, x).size() == 1",
                    "message": ONE_SOURCE,
                }
            ]
        }
    )

    secret_key_ref: KeyRef | None = Field(default=None, description="A Secret's key.")
    config_map_key_ref: KeyRef | None = Field(default=None, description="A ConfigMap's key.")
    field_ref: FieldRef | None = Field(default=None, description="A pod field.")
    resource_field_ref: ResourceFieldRef | None = Field(
        default=None, description="A resource request or limit."
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvVarSource:
        sources = [self.secret_key_ref, self.config_map_key_ref, self.field_ref]
        if sum(s is not None for s in [*sources, self.resource_field_ref]) != 1:
            raise ValueError(ONE_SOURCE)
        return self
