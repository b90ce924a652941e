"""Pure parts of the loop: pods -> replica states and scrape targets, metrics text -> load,
the ModelService spec -> the policy's config.

A replica's load is `shoal_inflight_requests` for the model (admitted and not yet answered:
queued or running), or `shoal_queue_depth` (rows waiting) when that is larger, as it is for
multi-row requests; the two are never added, since in-flight already includes the queued.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import shoal.metric_names as metric_names
from shoal.operator import spec as api
from shoal.operator.autoscaler.policy import Config, ReplicaState

DEFAULT_PORT = 8000


@dataclass(frozen=True)
class Target:
    """One replica pod: its state and where its /metrics is (None: no IP yet)."""

    name: str
    state: ReplicaState
    url: str | None


def _ready(pod: Mapping[str, Any]) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _port(pod: Mapping[str, Any]) -> int:
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == "http" and p.get("containerPort"):
                return int(p["containerPort"])
    return DEFAULT_PORT


def replica_targets(pods: Sequence[Mapping[str, Any]]) -> list[Target]:
    """The model's pods as the policy sees them; finished pods are left out."""
    out = []
    for pod in pods:
        md, status = pod.get("metadata") or {}, pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            continue
        if md.get("deletionTimestamp"):
            state = ReplicaState.TERMINATING
        elif _ready(pod):
            state = ReplicaState.READY
        else:
            state = ReplicaState.STARTING
        ip = status.get("podIP")
        url = f"http://{ip}:{_port(pod)}/metrics" if ip else None
        out.append(Target(str(md.get("name", "")), state, url))
    return out


_MODEL_LABEL = re.compile(r'[{,]\s*model="([^"]*)"')


def _values(text: str, metric: str, model: str) -> list[float]:
    """The samples of one gauge for one model. A line scan, not prometheus_client's parser:
    a replica's exposition is mostly histogram lines that the loop never reads, and parsing
    them all cost ~9 ms per replica scrape (bench.autoscale.loop_cpu)."""
    out = []
    for line in text.splitlines():
        if not line.startswith(metric) or line[len(metric) : len(metric) + 1] not in ("{", " "):
            continue
        head, _, rest = line.rpartition("}") if "}" in line else ("", "", line[len(metric) :])
        m = _MODEL_LABEL.search(head)
        if m is None or m.group(1) != model:
            continue
        try:
            out.append(float(rest.split()[0]))
        except (IndexError, ValueError):
            continue  # a malformed line counts as absent
    return out


def replica_load(text: str, model: str) -> float | None:
    """Queued + in-flight for `model` from a replica's /metrics (None: the model is absent)."""
    inflight = _values(text, metric_names.INFLIGHT_REQUESTS, model)
    queued = _values(text, metric_names.QUEUE_DEPTH, model)
    if not inflight and not queued:
        return None
    return max(sum(inflight), sum(queued))


def gateway_held(text: str, model: str) -> float:
    """Requests one gateway holds for `model` (0 when it has none)."""
    return sum(_values(text, metric_names.GATEWAY_HELD_REQUESTS, model))


def config_for(spec: api.ModelServiceSpec, overrides: Mapping[str, float]) -> Config | None:
    """The policy's config for a spec (None: autoscaling off). `overrides` are the operator's
    settings for the windows (stable/panic window seconds), for short test runs."""
    a = spec.autoscaling
    if a is None:
        return None
    base = Config.windows_for(
        float(a.scale_down_delay_seconds),
        min_replicas=a.min_replicas,
        max_replicas=a.max_replicas,
        target=float(a.target_queue_depth),
        scale_to_zero_delay_s=float(a.scale_to_zero_delay_seconds),
    )
    if not overrides:
        return base
    fields = {**base.__dict__, **overrides}
    return Config(**fields)
