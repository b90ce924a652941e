"""Status computation from observed Deployments and Pods (pure; fixed clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shoal.operator import status as st

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def deployment(
    replicas: int,
    ready: int,
    updated: int | None = None,
    *,
    gen: int = 1,
    observed: int = 1,
    deadline: bool = False,
    replica_failure: str | None = None,
) -> dict[str, Any]:
    conds = []
    if replica_failure is not None:
        conds.append(
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": replica_failure,
            }
        )
    if deadline:
        conds.append(
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "x" has timed out progressing.',
            }
        )
    return {
        "metadata": {"generation": gen},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": replicas if updated is None else updated,
            "conditions": conds,
        },
    }


def pod(
    name: str,
    *,
    ready: bool = True,
    unschedulable: str | None = None,
    exit_code: int | None = None,
    message: str = "",
    waiting: str | None = None,
    terminating: bool = False,
    reason: str = "Error",
) -> dict[str, Any]:
    conds = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable is not None:
        conds.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
            }
        )
    cs: dict[str, Any] = {"name": "model", "state": {}}
    if waiting:
        cs["state"] = {"waiting": {"reason": waiting, "message": f"{waiting} happened"}}
    if exit_code is not None:
        cs["lastState"] = {
            "terminated": {"exitCode": exit_code, "message": message, "reason": reason}
        }
    md: dict[str, Any] = {"name": name}
    if terminating:
        md["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": md, "status": {"conditions": conds, "containerStatuses": [cs]}}


def obs(
    dep: dict[str, Any] | None, pods: list[dict[str, Any]], desired: int = 2, **kw: Any
) -> st.Observation:
    return st.Observation(
        generation=3,
        desired_replicas=desired,
        url="http://iris.ml.svc.cluster.local",
        selector="serving.shoal.dev/model=iris",
        deployment=dep,
        pods=pods,
        **kw,
    )


def conds(o: st.Observation) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in st.conditions(o)}


GPU_MSG = "0/4 nodes are available: 2 Insufficient nvidia.com/gpu, 2 node(s) had untolerated taint."
LOAD_MSG = "ModuleNotFoundError: No module named 'no_such_module'"

CASES = [
    (
        "creating",
        obs(None, []),
        {
            "Ready": ("False", "Creating"),
            "Progressing": ("True", "Creating"),
            "Degraded": ("False", "AsExpected"),
        },
    ),
    (
        "starting",
        obs(deployment(2, 0), [pod("a", ready=False), pod("b", ready=False)]),
        {
            "Ready": ("False", "ReplicasNotReady"),
            "Progressing": ("True", "ScalingUp"),
            "Scheduled": ("True", "AllPodsScheduled"),
            "ModelLoadFailed": ("False", "NoFailure"),
            "Degraded": ("False", "AsExpected"),
        },
    ),
    (
        "all-ready",
        obs(deployment(2, 2), [pod("a"), pod("b")]),
        {
            "Ready": ("True", "AllReplicasReady"),
            "Progressing": ("False", "RolloutComplete"),
            "Degraded": ("False", "AsExpected"),
        },
    ),
    (
        "rolling-update",
        obs(deployment(3, 3, updated=1, gen=2, observed=2), [pod("a"), pod("b"), pod("c")]),
        {"Ready": ("True", "AllReplicasReady"), "Progressing": ("True", "RollingUpdate")},
    ),
    (
        "deployment-catching-up",
        obs(deployment(2, 2, gen=3, observed=2), [pod("a"), pod("b")]),
        {"Progressing": ("True", "Updating")},
    ),
    (
        "scaling-down",
        obs(deployment(3, 3), [pod("a"), pod("b"), pod("c")], desired=1),
        {"Ready": ("True", "AllReplicasReady"), "Progressing": ("True", "ScalingDown")},
    ),
    (
        "scaled-to-zero",
        obs(deployment(0, 0), [], desired=0),
        {"Ready": ("True", "ScaledToZero"), "Progressing": ("False", "RolloutComplete")},
    ),
    (
        "gpu-unschedulable",
        obs(deployment(1, 0), [pod("a", ready=False, unschedulable=GPU_MSG)], desired=1),
        {
            "Ready": ("False", "Unschedulable"),
            "Scheduled": ("False", "Unschedulable"),
            "Degraded": ("True", "Unschedulable"),
        },
    ),
    (
        "load-failed",
        obs(
            deployment(1, 0),
            [pod("a", ready=False, exit_code=1, message=LOAD_MSG, waiting="CrashLoopBackOff")],
            desired=1,
        ),
        {
            "Ready": ("False", "ModelLoadFailed"),
            "ModelLoadFailed": ("True", "ContainerFailed"),
            "Degraded": ("True", "ModelLoadFailed"),
        },
    ),
    (
        "new-version-fails-old-serves",
        obs(deployment(3, 2, updated=1), [pod("a"), pod("b"), pod("n", ready=False, exit_code=2)]),
        {
            "Ready": ("True", "AllReplicasReady"),
            "ModelLoadFailed": ("True", "ContainerFailed"),
            "Progressing": ("True", "RollingUpdate"),
        },
    ),
    (
        "image-pull",
        obs(deployment(1, 0), [pod("a", ready=False, waiting="ImagePullBackOff")], desired=1),
        {"Ready": ("False", "ImagePullBackOff"), "Degraded": ("True", "ImagePullBackOff")},
    ),
    (
        "deadline",
        obs(deployment(2, 1, deadline=True), [pod("a"), pod("b", ready=False)]),
        {
            "Ready": ("True", "SomeReplicasReady"),
            "Progressing": ("False", "ProgressDeadlineExceeded"),
            "Degraded": ("True", "ProgressDeadlineExceeded"),
        },
    ),
    (
        "terminating-pods-ignored",
        obs(
            deployment(1, 1),
            [pod("a"), pod("old", ready=False, exit_code=1, unschedulable="x", terminating=True)],
            desired=1,
        ),
        {"Scheduled": ("True", "AllPodsScheduled"), "ModelLoadFailed": ("False", "NoFailure")},
    ),
    (
        "invalid-spec",
        obs(None, [], blocking=("InvalidSpec", "spec.model.class: bad")),
        {"Ready": ("False", "InvalidSpec"), "Progressing": ("False", "InvalidSpec")},
    ),
    (
        "alias-resolved",
        obs(
            deployment(2, 2),
            [pod("a"), pod("b")],
            alias_uri="models:/iris@champion",
            model_uri="models:/iris/4",
            model_version="4",
        ),
        {"ModelResolved": ("True", "Resolved"), "Ready": ("True", "AllReplicasReady")},
    ),
    (
        "alias-unknown",
        obs(None, [], alias_uri="models:/iris@nope", resolve_error="alias not found"),
        {
            "ModelResolved": ("False", "ModelResolutionFailed"),
            "Ready": ("False", "ModelResolutionFailed"),
        },
    ),
    (
        "alias-lost-keeps-serving",
        obs(
            deployment(2, 2),
            [pod("a"), pod("b")],
            alias_uri="models:/iris@champion",
            model_uri="models:/iris/4",
            model_version="4",
            resolve_error="registry unreachable",
        ),
        {
            "ModelResolved": ("False", "ModelResolutionFailed"),
            "Ready": ("True", "AllReplicasReady"),
            "Degraded": ("True", "ModelResolutionFailed"),
        },
    ),
]


QUOTA_MSG = 'pods "x-1" is forbidden: exceeded quota: q, requested: pods=1, used: pods=0'
CASES += [
    (
        "replica-failure",
        obs(deployment(0, 0, replica_failure=QUOTA_MSG), [], desired=1),
        {"Ready": ("False", "FailedCreate"), "Degraded": ("True", "FailedCreate")},
    ),
    (
        "image-never-pull",
        obs(deployment(1, 0), [pod("a", ready=False, waiting="ErrImageNeverPull")], desired=1),
        {"Ready": ("False", "ErrImageNeverPull"), "Degraded": ("True", "ErrImageNeverPull")},
    ),
]


def test_replica_failure_message_is_in_ready() -> None:
    by_type = {
        c["type"]: c
        for c in st.conditions(obs(deployment(0, 0, replica_failure=QUOTA_MSG), [], desired=1))
    }
    assert QUOTA_MSG in by_type["Ready"]["message"]
    assert QUOTA_MSG in by_type["Degraded"]["message"]


def test_crash_loop_keeps_one_reason_and_status() -> None:
    """The kubelet flips a crashing container's waiting reason between none (just exited,
    reason Error) and CrashLoopBackOff: the conditions (and so status and Events) must not."""
    crashed = [pod("a", ready=False, exit_code=1, message=LOAD_MSG)]
    backing_off = [pod("a", ready=False, exit_code=1, message=LOAD_MSG, waiting="CrashLoopBackOff")]
    first, _ = st.compute_status(obs(deployment(1, 0), crashed, desired=1), {}, T0)
    second, transitions = st.compute_status(
        obs(deployment(1, 0), backing_off, desired=1), first, T0 + timedelta(seconds=20)
    )
    assert st.status_patch(second, first) == {}
    assert transitions == []


@pytest.mark.parametrize(("name", "observation", "expected"), CASES, ids=[c[0] for c in CASES])
def test_conditions(
    name: str, observation: st.Observation, expected: dict[str, tuple[str, str]]
) -> None:
    got = conds(observation)
    for type_, want in expected.items():
        assert got[type_] == want, f"{name}: {type_}"


def test_messages_carry_the_cause() -> None:
    by_type = {c["type"]: c for c in st.conditions(CASES[7][1])}
    assert GPU_MSG in by_type["Scheduled"]["message"]
    assert "pod a" in by_type["Scheduled"]["message"]
    by_type = {c["type"]: c for c in st.conditions(CASES[8][1])}
    assert LOAD_MSG in by_type["ModelLoadFailed"]["message"]
    assert "exit code 1" in by_type["ModelLoadFailed"]["message"]
    assert LOAD_MSG in by_type["Ready"]["message"]


def test_oom_kill_is_named_beside_the_log_tail() -> None:
    """With FallbackToLogsOnError the kubelet's message is the log's tail: a replica killed
    by the kernel while loading must still say OOMKilled, and what to change."""
    tail = "loading weights: 41% (2.1 GiB)"
    oom = [pod("a", ready=False, exit_code=137, message=tail, reason="OOMKilled")]
    by_type = {c["type"]: c for c in st.conditions(obs(deployment(1, 0), oom, desired=1))}
    message = by_type["ModelLoadFailed"]["message"]
    assert "exit code 137 (OOMKilled" in message
    assert "spec.resources.memory" in message
    assert tail in message
    assert "OOMKilled" in by_type["Ready"]["message"]


def test_plain_exit_reasons_add_nothing() -> None:
    plain = [pod("a", ready=False, exit_code=1, message=LOAD_MSG)]
    by_type = {c["type"]: c for c in st.conditions(obs(deployment(1, 0), plain, desired=1))}
    assert f"pod a: exit code 1: {LOAD_MSG}" in by_type["ModelLoadFailed"]["message"]
    other = [pod("a", ready=False, exit_code=2, message="", reason="ContainerCannotRun")]
    by_type = {c["type"]: c for c in st.conditions(obs(deployment(1, 0), other, desired=1))}
    assert "pod a: exit code 2 (ContainerCannotRun)" in by_type["ModelLoadFailed"]["message"]


def test_compute_status_fields() -> None:
    status, _ = st.compute_status(CASES[2][1], {}, T0)
    assert {k: v for k, v in status.items() if k != "conditions"} == {
        "observedGeneration": 3,
        "replicas": 2,
        "readyReplicas": 2,
        "updatedReplicas": 2,
        "desiredReplicas": 2,
        "url": "http://iris.ml.svc.cluster.local",
        "selector": "serving.shoal.dev/model=iris",
        "modelUri": None,
        "modelVersion": None,
    }
    for c in status["conditions"]:
        assert c["lastTransitionTime"] == "2026-01-01T12:00:00Z"
        assert c["observedGeneration"] == 3


def test_transition_times_and_events() -> None:
    starting, all_ready = CASES[1][1], CASES[2][1]
    s1, t1 = st.compute_status(starting, {}, T0)
    # A first, healthy value is not news; Ready always is; starting up is not a warning.
    assert [(t.type, t.reason, t.warning) for t in t1] == [("Ready", "ReplicasNotReady", False)]
    # Same observation later: nothing changes, no patch, no events.
    s2, t2 = st.compute_status(starting, s1, T0 + timedelta(minutes=1))
    assert t2 == []
    assert st.status_patch(s2, s1) == {}
    # Ready flips: its time moves, unchanged conditions keep theirs.
    s3, t3 = st.compute_status(all_ready, s2, T0 + timedelta(minutes=2))
    assert [(t.type, t.status, t.reason, t.warning) for t in t3] == [
        ("Ready", "True", "AllReplicasReady", False),
        ("Progressing", "False", "RolloutComplete", False),
    ]
    times = {c["type"]: c["lastTransitionTime"] for c in s3["conditions"]}
    assert times["Ready"] == "2026-01-01T12:02:00Z"
    assert times["Scheduled"] == "2026-01-01T12:00:00Z"
    assert set(st.status_patch(s3, s2)) == {"readyReplicas", "conditions"}


def test_warning_flags() -> None:
    _, ts = st.compute_status(CASES[8][1], {}, T0)
    warn = {t.type: t.warning for t in ts}
    assert warn == {"Ready": True, "ModelLoadFailed": True, "Degraded": True}
    _, ts = st.compute_status(CASES[7][1], {}, T0)  # unschedulable GPU
    assert {t.type: t.warning for t in ts}["Scheduled"] is True


def test_status_patch_leaves_foreign_fields() -> None:
    prev = {"queueDepth": 7.0, "replicas": 1, "modelVersion": "3"}
    new = {"replicas": 2, "modelVersion": None, "modelUri": None}
    # queueDepth belongs to the autoscaler; None deletes only what exists.
    assert st.status_patch(new, prev) == {"replicas": 2, "modelVersion": None}
