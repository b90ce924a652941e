"""Pure status computation: what the operator observed -> ModelService status and conditions.

Conditions (status True is *good* for Ready/Scheduled/ModelResolved, *bad* for ModelLoadFailed
and Degraded, as their names say):
- Ready: the model answers requests (>= 1 ready replica, or scaled to zero on purpose).
- Progressing: a rollout or scale is under way; False with ProgressDeadlineExceeded when stuck.
- Scheduled: False/Unschedulable with the scheduler's message when a replica fits no node.
- ModelLoadFailed: a replica's container exited non-zero before it became ready; the message
  carries its termination message (the runtime writes the cause to /dev/termination-log).
- Degraded: fewer ready replicas than desired because of a failure (not mere start-up).

Ready and Degraded name the most specific cause of missing replicas (one `_facts` pass shared
by every condition): a container that exited (ModelLoadFailed), pods the Deployment controller
could not create (its ReplicaFailure reason, e.g. FailedCreate for a quota, an admission webhook
or a missing PriorityClass), a pod that fits no node (Unschedulable), a container that cannot
start (the kubelet's waiting reason: ErrImagePull, ImagePullBackOff, ErrImageNeverPull,
InvalidImageName, ...), or a stuck rollout (ProgressDeadlineExceeded).
- ModelResolved (registry alias URIs only): the alias -> version resolution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

READY = "Ready"
PROGRESSING = "Progressing"
SCHEDULED = "Scheduled"
MODEL_LOAD_FAILED = "ModelLoadFailed"
DEGRADED = "Degraded"
MODEL_RESOLVED = "ModelResolved"

# Condition types whose True status is bad news (Warning events).
ABNORMAL_TRUE = frozenset({MODEL_LOAD_FAILED, DEGRADED})
# Reasons that are part of normal operation even with the "bad" status.
ROUTINE_REASONS = frozenset({"RolloutComplete", "ReplicasNotReady", "Creating"})
MESSAGE_LIMIT = 1024
# Waiting reasons that mean a replica cannot start; reported as such.
_STUCK_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


@dataclass(frozen=True)
class Observation:
    """Everything one status pass looked at."""

    generation: int
    desired_replicas: int
    url: str
    selector: str
    deployment: Mapping[str, Any] | None
    pods: Sequence[Mapping[str, Any]]
    model_uri: str | None = None
    model_version: str | None = None
    alias_uri: str | None = None
    """The spec's `models:/name@alias`, when it is one."""
    resolve_error: str | None = None
    blocking: tuple[str, str] | None = None
    """(reason, message) that stops the operator from acting: invalid spec, rejected apply."""


@dataclass(frozen=True)
class Transition:
    """A condition whose status or reason changed in this pass (for Events)."""

    type: str
    status: str
    reason: str
    message: str
    warning: bool


def rfc3339(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cond(type_: str, ok: bool, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message[:MESSAGE_LIMIT],
    }


def _terminating(pod: Mapping[str, Any]) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))


def _pod_name(pod: Mapping[str, Any]) -> str:
    return str(pod.get("metadata", {}).get("name", "?"))


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    for c in pod.get("status", {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


def unschedulable(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Scheduler messages of live pods that fit no node."""
    out = []
    for pod in pods:
        if _terminating(pod):
            continue
        for c in pod.get("status", {}).get("conditions") or []:
            if (
                c.get("type") == "PodScheduled"
                and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"
            ):
                out.append(f"pod {_pod_name(pod)}: {c.get('message', '')}".strip())
    return out


def load_failures(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Messages for live, unready pods whose container exited non-zero. One reason for all
    (ModelLoadFailed's `ContainerFailed`): the kubelet's own reason flips Error <->
    CrashLoopBackOff with every restart, which would rewrite status and post an Event each time."""
    out = []
    for pod in pods:
        if _terminating(pod) or _pod_ready(pod):
            continue
        for cs in pod.get("status", {}).get("containerStatuses") or []:
            state = cs.get("state") or {}
            for term in (state.get("terminated"), (cs.get("lastState") or {}).get("terminated")):
                if term and term.get("exitCode", 0) != 0:
                    out.append(f"pod {_pod_name(pod)}: {_exit_text(term)}")
                    break
    return out


# The kubelet's terminated reasons that say nothing the exit code does not.
_PLAIN_EXIT = frozenset({"", "Error", "Completed"})


def _exit_text(term: Mapping[str, Any]) -> str:
    """'exit code N', then a telling kubelet reason (OOMKilled, ...), then the message: with
    `FallbackToLogsOnError` the message is the log's tail, which for a kill by the kernel ends
    mid-load and never names the cause, so the reason must not hide behind it."""
    reason = str(term.get("reason") or "")
    text = f"exit code {term['exitCode']}"
    if reason == "OOMKilled":
        text += " (OOMKilled: the replica went over its memory limit; raise spec.resources.memory)"
    elif reason not in _PLAIN_EXIT:
        text += f" ({reason})"
    message = str(term.get("message") or "").strip()
    return f"{text}: {message}" if message else text


def stuck_containers(pods: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(waiting reason, message) of containers that cannot start (image, config)."""
    out = []
    for pod in pods:
        if _terminating(pod):
            continue
        for cs in pod.get("status", {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _STUCK_WAITING:
                msg = f"pod {_pod_name(pod)}: {waiting.get('message', '')}".strip()
                out.append((str(waiting["reason"]), msg))
    return out


def _deployment_condition(dep: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for c in (dep or {}).get("status", {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


@dataclass(frozen=True)
class _Facts:
    """What every condition is computed from, derived once per observation."""

    dep: Mapping[str, Any] | None
    desired: int
    replicas: int
    ready: int
    updated: int
    available: int
    unschedulable: list[str]
    failed: list[str]
    deadline: str | None
    """The Deployment's ProgressDeadlineExceeded message, if it says so."""
    cause: tuple[str, str] | None
    """The most specific reason replicas are missing, for Ready and Degraded."""

    @property
    def counts(self) -> str:
        return f"{self.ready}/{self.desired} replicas ready"


def _facts(obs: Observation) -> _Facts:
    dep = obs.deployment
    st = (dep or {}).get("status", {})
    sched = unschedulable(obs.pods)
    failed = load_failures(obs.pods)
    stuck = stuck_containers(obs.pods)
    progress = _deployment_condition(dep, "Progressing")
    deadline = (
        str(progress.get("message", ""))
        if progress is not None and progress.get("reason") == "ProgressDeadlineExceeded"
        else None
    )
    # The controller could not create pods at all (quota, admission, missing PriorityClass).
    replica_failure = _deployment_condition(dep, "ReplicaFailure")
    cause: tuple[str, str] | None = None
    if failed:
        cause = (MODEL_LOAD_FAILED, "; ".join(failed))
    elif replica_failure is not None and replica_failure.get("status") == "True":
        reason = str(replica_failure.get("reason") or "ReplicaFailure")
        cause = (reason, str(replica_failure.get("message", "")))
    elif sched:
        cause = ("Unschedulable", "; ".join(sched))
    elif stuck:
        cause = (stuck[0][0], "; ".join(m for _, m in stuck))
    elif deadline is not None:
        cause = ("ProgressDeadlineExceeded", deadline)
    return _Facts(
        dep=dep,
        desired=obs.desired_replicas,
        replicas=int(st.get("replicas") or 0),
        ready=int(st.get("readyReplicas") or 0),
        updated=int(st.get("updatedReplicas") or 0),
        available=int(st.get("availableReplicas") or 0),
        unschedulable=sched,
        failed=failed,
        deadline=deadline,
        cause=cause,
    )


def _model_resolved(obs: Observation) -> dict[str, Any] | None:
    if obs.alias_uri is None:
        return None
    if obs.resolve_error is None and obs.model_version is not None:
        msg = f"{obs.alias_uri} is version {obs.model_version}"
        return _cond(MODEL_RESOLVED, True, "Resolved", msg)
    return _cond(MODEL_RESOLVED, False, "ModelResolutionFailed", obs.resolve_error or "")


def _ready(f: _Facts) -> dict[str, Any]:
    if f.dep is None:
        return _cond(READY, False, "Creating", "the Deployment does not exist yet")
    if f.desired == 0 and f.ready == 0:
        return _cond(READY, True, "ScaledToZero", "no replicas wanted")
    if f.ready > 0:
        reason = "AllReplicasReady" if f.ready >= f.desired else "SomeReplicasReady"
        return _cond(READY, True, reason, f.counts)
    if f.cause is None:
        return _cond(READY, False, "ReplicasNotReady", f.counts)
    return _cond(READY, False, f.cause[0], f"{f.counts}: {f.cause[1]}")


def _progressing(f: _Facts) -> dict[str, Any]:
    dep_generation = int((f.dep or {}).get("metadata", {}).get("generation") or 0)
    dep_observed = int((f.dep or {}).get("status", {}).get("observedGeneration") or 0)
    if f.dep is None:
        return _cond(PROGRESSING, True, "Creating", "creating the Deployment")
    if f.deadline is not None:
        return _cond(PROGRESSING, False, "ProgressDeadlineExceeded", f.deadline)
    if f.replicas > f.updated:
        return _cond(PROGRESSING, True, "RollingUpdate", f"{f.updated}/{f.desired} updated")
    if dep_observed < dep_generation:
        return _cond(PROGRESSING, True, "Updating", "the Deployment controller is catching up")
    if f.available < f.desired or f.ready < f.desired:
        return _cond(PROGRESSING, True, "ScalingUp", f.counts)
    if f.replicas > f.desired:
        return _cond(PROGRESSING, True, "ScalingDown", f"{f.replicas} -> {f.desired} replicas")
    return _cond(PROGRESSING, False, "RolloutComplete", f.counts)


def _scheduled(f: _Facts) -> dict[str, Any]:
    if f.unschedulable:
        return _cond(SCHEDULED, False, "Unschedulable", "; ".join(f.unschedulable))
    return _cond(SCHEDULED, True, "AllPodsScheduled")


def _model_load_failed(f: _Facts) -> dict[str, Any]:
    if f.failed:
        return _cond(MODEL_LOAD_FAILED, True, "ContainerFailed", "; ".join(f.failed))
    return _cond(MODEL_LOAD_FAILED, False, "NoFailure")


def _degraded(obs: Observation, f: _Facts) -> dict[str, Any]:
    if obs.resolve_error is not None and obs.model_uri is not None:
        msg = f"serving {obs.model_uri}; resolving {obs.alias_uri} failed: {obs.resolve_error}"
        return _cond(DEGRADED, True, "ModelResolutionFailed", msg)
    if f.dep is not None and f.ready < f.desired and f.cause is not None:
        return _cond(DEGRADED, True, f.cause[0], f"{f.counts}: {f.cause[1]}")
    return _cond(DEGRADED, False, "AsExpected")


def conditions(obs: Observation) -> list[dict[str, Any]]:
    """The conditions for one observation (without timestamps)."""
    resolved = _model_resolved(obs)
    out = [resolved] if resolved is not None else []
    if obs.blocking is not None:
        reason, message = obs.blocking
        return [
            *out,
            _cond(READY, False, reason, message),
            _cond(PROGRESSING, False, reason, message),
        ]
    if obs.model_uri is None and obs.alias_uri is not None:
        error = obs.resolve_error or ""
        return [
            *out,
            _cond(READY, False, "ModelResolutionFailed", error),
            _cond(PROGRESSING, False, "ModelResolutionFailed", error),
        ]
    f = _facts(obs)
    return [
        *out,
        _ready(f),
        _progressing(f),
        _scheduled(f),
        _model_load_failed(f),
        _degraded(obs, f),
    ]


def with_times(
    new: Sequence[Mapping[str, Any]],
    previous: Sequence[Mapping[str, Any]],
    now: datetime,
    generation: int,
) -> list[dict[str, Any]]:
    """Stamp lastTransitionTime: kept while a condition's status stays the same."""
    before = {c.get("type"): c for c in previous}
    out = []
    for c in new:
        old = before.get(c["type"])
        same = old is not None and old.get("status") == c["status"]
        stamped = dict(c)
        stamped["lastTransitionTime"] = (
            old.get("lastTransitionTime") if same and old is not None else None
        ) or rfc3339(now)
        stamped["observedGeneration"] = generation
        out.append(stamped)
    return out


def _counts(dep: Mapping[str, Any] | None) -> tuple[int, int, int]:
    st = (dep or {}).get("status", {})
    return (
        int(st.get("replicas") or 0),
        int(st.get("readyReplicas") or 0),
        int(st.get("updatedReplicas") or 0),
    )


def compute_status(
    obs: Observation, previous: Mapping[str, Any], now: datetime
) -> tuple[dict[str, Any], list[Transition]]:
    """The operator-owned part of status, and the condition transitions since `previous`."""
    replicas, ready, updated = _counts(obs.deployment)
    prev_conditions = list(previous.get("conditions") or [])
    new_conditions = with_times(conditions(obs), prev_conditions, now, obs.generation)
    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        "replicas": replicas,
        "readyReplicas": ready,
        "updatedReplicas": updated,
        "desiredReplicas": obs.desired_replicas,
        "url": obs.url,
        "selector": obs.selector,
        "modelUri": obs.model_uri,
        "modelVersion": obs.model_version,
        "conditions": new_conditions,
    }
    before = {c.get("type"): c for c in prev_conditions}
    transitions = []
    for c in new_conditions:
        old = before.get(c["type"])
        if old is None or old.get("status") != c["status"] or old.get("reason") != c["reason"]:
            bad = c["status"] == ("True" if c["type"] in ABNORMAL_TRUE else "False")
            bad = bad and c["reason"] not in ROUTINE_REASONS
            if old is None and not bad and c["type"] != READY:
                continue  # a first, healthy value is not news
            transitions.append(
                Transition(c["type"], c["status"], c["reason"], c["message"], warning=bad)
            )
    return status, transitions


def status_patch(new: Mapping[str, Any], previous: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch with only the changed keys (empty: nothing to write). Keys that are None
    in `new` delete the field; keys the operator does not own (queueDepth) are never touched."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        if previous.get(key) != value and not (value is None and key not in previous):
            patch[key] = value
    return patch
