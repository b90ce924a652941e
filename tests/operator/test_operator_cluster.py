"""The operator against the real API server, scheduler and controllers of the local control
plane (e2e/), with pods run by the process kubelet from the local Shoal install: the schema,
the lifecycle, placement, conditions, deletion, restarts and alias rollouts. The CLI under its
own RBAC is in test_operator_cluster_cli.py, the examples in test_operator_examples.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests import TABLE, build_case, merge
from operator_harness import (
    ADDER,
    FakeClock,
    Load,
    Operator,
    cluster_wait,
    deployment_env,
    infer_v2,
    manifest,
    operator_settings,
    running_operator,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

HERE = Path(__file__).parent
OWNED = ("deployment", "service", "serviceaccount", "poddisruptionbudget")
DRIFT_DEADLINE = 10.0
"""Repair takes well under 2 s on an idle machine (bench/RESULTS.md); slack for a loaded one."""
_SELECTOR_EDIT = '{"spec":{"selector":{"serving.shoal.dev/model":"other"}}}'


def test_api_server_rejects_the_invalid_table(crds: Any, k8s_namespace: str) -> None:
    cases = [c for c in TABLE["cases"] if c["rejected_by"] == "schema"]
    assert len(cases) >= 20
    wrong = []
    for case in cases:
        proc = crds.kubectl(
            "apply", "-n", k8s_namespace, "--dry-run=server", "-f", "-",
            input=yaml.safe_dump(build_case(case)), check=False,
        )  # fmt: skip
        if proc.returncode == 0 or case["error"] not in proc.stderr:
            wrong.append(f"{case['id']}: rc={proc.returncode} {proc.stderr.strip()[:300]}")
    assert wrong == []
    for path in sorted((HERE.parents[1] / "examples").glob("*.yaml")):
        crds.kubectl("apply", "-n", k8s_namespace, "--dry-run=server", "-f", str(path))


def test_kubectl_explain_documents_every_field(crds: Any) -> None:
    out = crds.kubectl("explain", "modelservice.spec.batching").stdout
    assert "maxBatchSize" in out
    assert "Most requests (rows) run in one model call." in out
    out = crds.kubectl("explain", "msvc.spec.resources.gpu").stdout
    assert "nvidia.com/gpu" in out


def test_create_scale_update_drift_delete(op: Operator) -> None:
    op.apply(manifest("adder", ADDER))
    op.wait_status("adder", lambda s: s.get("readyReplicas") == 2, "2 ready replicas", 180)
    op.wait_condition("adder", "Ready", "True", "AllReplicasReady")
    msvc = op.get("msvc", "adder")
    assert msvc is not None
    assert msvc["status"]["observedGeneration"] == msvc["metadata"]["generation"]
    assert msvc["status"]["url"] == f"http://adder.{op.namespace}.svc.cluster.local"

    # Printer columns.
    table = op.kubectl("get", "msvc", "adder").stdout.splitlines()
    assert table[0].split() == [
        "NAME", "READY", "REASON", "REPLICAS", "DESIRED", "QUEUE", "URL", "AGE",
    ]  # fmt: skip
    assert table[1].split()[:5] == ["adder", "True", "AllReplicasReady", "2", "2"]
    # kopf keeps nothing on the object: no finalizer (deletion never waits for the operator),
    # no last-handled-configuration annotation (whose size limit a large spec once hit).
    assert "finalizers" not in msvc["metadata"]
    assert not [a for a in msvc["metadata"].get("annotations") or {} if "kopf" in a]

    # Owned objects carry a controller reference to the ModelService.
    uid = msvc["metadata"]["uid"]
    for kind in ("deployment", "service", "serviceaccount", "poddisruptionbudget"):
        obj = json.loads(
            op.kubectl("get", kind, "adder", "-o", "json", "--show-managed-fields").stdout
        )
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["uid"], ref["controller"]) == (uid, True), kind
        assert "shoal-operator" in {m["manager"] for m in obj["metadata"]["managedFields"]}

    # Each replica answers V2 at its pod IP.
    ips = op.ready_pod_ips("adder")
    assert len(ips) == 2
    for ip in ips:
        assert infer_v2(ip, "adder", [1, 2, 3]) == [2, 3, 4]

    # kubectl scale goes through the scale subresource.
    op.kubectl("scale", "msvc", "adder", "--replicas=3")
    op.wait_status("adder", lambda s: s.get("readyReplicas") == 3, "3 ready replicas", 180)
    scale = json.loads(op.kubectl("get", "--raw", _scale_path(op, "adder")).stdout)
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["selector"] == "serving.shoal.dev/model=adder"

    # A spec change rolls the replicas under load with no failed request.
    with Load(op, "adder", [1, 2, 3]) as load:
        cluster_wait(op, lambda: load.ok >= 20, "20 answers before the update")
        op.kubectl(
            "patch", "msvc", "adder", "--type=merge",
            "-p", json.dumps({"spec": {"model": {"config": {"increment": 10}}}}),
        )  # fmt: skip
        op.wait_condition("adder", "Progressing", "True", "RollingUpdate", 60)
        ready_seen: set[str] = set()

        def rolled() -> bool:
            ready = op.condition("adder", "Ready") or {}
            ready_seen.add(ready.get("status", "missing"))
            progressing = op.condition("adder", "Progressing") or {}
            st = (op.get("msvc", "adder") or {}).get("status", {})
            return bool(
                st.get("updatedReplicas") == 3
                and st.get("replicas") == 3
                and st.get("readyReplicas") == 3
                and progressing.get("reason") == "RolloutComplete"
                and (11, 12, 13) in load.answers
            )

        cluster_wait(op, rolled, "rolling update complete", 240)
        cluster_wait(op, lambda: load.ok >= 50, "more answers after the update")
    assert load.failures == []
    assert {(2, 3, 4), (11, 12, 13)} <= load.answers
    assert ready_seen == {"True"}

    # Three spec changes (create, scale, config) applied the Deployment three times; the
    # hundreds of pod and status events in between wrote nothing (write only on difference).
    assert op.reconciler.writes["Deployment"] == 3
    assert op.reconciler.writes["Service"] == 1

    # Drift: edits to owned objects are reverted and deleted ones recreated, from the watch
    # event that shows them (the resync is 600 s here), each within a few seconds.
    uids = {k: (op.get(k, "adder") or {})["metadata"]["uid"] for k in OWNED}
    op.kubectl("patch", "deployment", "adder", "--type=merge", "-p", '{"spec":{"replicas":1}}')
    op.kubectl("patch", "service", "adder", "--type=merge", "-p", _SELECTOR_EDIT)
    for kind in ("poddisruptionbudget", "serviceaccount"):
        op.kubectl("delete", kind, "adder", "--wait=false")
    cluster_wait(
        op,
        lambda: (op.get("deployment", "adder") or {}).get("spec", {}).get("replicas") == 3,
        "Deployment replicas repaired",
        DRIFT_DEADLINE,
    )
    cluster_wait(
        op,
        lambda: (
            (op.get("service", "adder") or {})["spec"]["selector"]
            == {"serving.shoal.dev/model": "adder"}
        ),
        "Service selector repaired",
        DRIFT_DEADLINE,
    )
    for kind in ("poddisruptionbudget", "serviceaccount"):
        cluster_wait(
            op,
            lambda kind=kind: (
                (op.get(kind, "adder") or {}).get("metadata", {}).get("uid")
                not in (None, uids[kind])
            ),
            f"{kind} recreated",
            DRIFT_DEADLINE,
        )
    op.kubectl("delete", "service", "adder", "--wait=false")
    cluster_wait(
        op,
        lambda: (
            (op.get("service", "adder") or {}).get("metadata", {}).get("uid")
            not in (None, uids["service"])
        ),
        "Service recreated",
        DRIFT_DEADLINE,
    )
    # A field the operator does not set is not drift: left as the user set it.
    op.kubectl("set", "env", "deployment/adder", "FOO=bar")
    writes = op.reconciler.writes["Deployment"]
    op.poke("adder")
    op.wait_passes(op.reconciler.passes + 1)
    assert op.reconciler.writes["Deployment"] == writes
    assert deployment_env(op, "adder").get("FOO") == "bar"

    # Scale to zero: no pods, and Ready says why.
    op.kubectl("scale", "msvc", "adder", "--replicas=0")
    op.wait_condition("adder", "Ready", "True", "ScaledToZero", 120)
    cluster_wait(
        op,
        lambda: op.items("pods", "serving.shoal.dev/model=adder") == [],
        "pods gone at zero",
        120,
    )

    # Deletion: the garbage collector removes everything the operator made.
    op.kubectl("delete", "msvc", "adder", "--wait=true", "--timeout=90s")
    for kind in ("deployment", "service", "serviceaccount", "poddisruptionbudget"):
        cluster_wait(op, lambda kind=kind: op.get(kind, "adder") is None, f"{kind} collected")
    cluster_wait(
        op, lambda: op.items("pods", "serving.shoal.dev/model=adder") == [], "pods gone", 120
    )


def _scale_path(op: Operator, name: str) -> str:
    return f"/apis/serving.shoal.dev/v1alpha1/namespaces/{op.namespace}/modelservices/{name}/scale"


def _node_labels(op: Operator, node: str) -> dict[str, str]:
    obj = op.cluster.get_json("node", node)
    labels: dict[str, str] = obj["metadata"].get("labels") or {}
    return labels


def test_gpu_replicas_land_on_gpu_nodes_and_unschedulable_is_reported(op: Operator) -> None:
    gpu = merge(ADDER, {"resources": {"gpu": 1}, "replicas": 2})
    op.apply(manifest("gpu", gpu))
    op.apply(manifest("too-many-gpus", merge(ADDER, {"resources": {"gpu": 16}, "replicas": 1})))
    op.wait_status("gpu", lambda s: s.get("readyReplicas") == 2, "2 ready GPU replicas", 180)
    pods = op.items("pods", "serving.shoal.dev/model=gpu")
    assert len(pods) == 2
    for p in pods:
        labels = _node_labels(op, p["spec"]["nodeName"])
        assert labels.get("nvidia.com/gpu.present") == "true", p["spec"]["nodeName"]
        limits = p["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"
    # A CPU-only model never lands on a (tainted) GPU node.
    op.apply(manifest("cpu", merge(ADDER, {"replicas": 2})))
    op.wait_status("cpu", lambda s: s.get("readyReplicas") == 2, "2 ready CPU replicas", 180)
    for p in op.items("pods", "serving.shoal.dev/model=cpu"):
        labels = _node_labels(op, p["spec"]["nodeName"])
        assert labels.get("nvidia.com/gpu.present") != "true"

    c = op.wait_condition("too-many-gpus", "Scheduled", "False", "Unschedulable", 90)
    assert "nvidia.com/gpu" in c["message"]
    ready = op.wait_condition("too-many-gpus", "Ready", "False", "Unschedulable")
    assert "nvidia.com/gpu" in ready["message"]


def test_what_the_schema_cannot_catch_becomes_a_condition(op: Operator) -> None:
    cases = [c for c in TABLE["cases"] if c["rejected_by"] == "operator"]
    for case in cases:
        doc = build_case(case)
        doc["metadata"]["name"] = case["id"]
        op.apply(doc)
    expected = {
        "unknown-mlflow-alias": ("ModelResolved", "False", "ModelResolutionFailed"),
        "affinity-invalid": ("Ready", "False", "ApplyFailed"),  # `In` without values
        "gpu-unschedulable": ("Scheduled", "False", "Unschedulable"),
        "class-not-importable": ("ModelLoadFailed", "True", None),
    }
    assert set(expected) == {c["id"] for c in cases}
    for name, (type_, status, reason) in expected.items():
        c = op.wait_condition(name, type_, status, reason, 120)
        assert c["message"], name
    load = op.condition("class-not-importable", "ModelLoadFailed") or {}
    assert "no_such_module" in load["message"]
    ready = op.wait_condition("class-not-importable", "Ready", "False", "ModelLoadFailed")
    assert "exit code" in ready["message"]
    # Warnings are posted as Events on the ModelService.
    events = json.loads(
        op.kubectl(
            "get", "events", "--field-selector", "involvedObject.name=class-not-importable",
            "-o", "json",
        ).stdout
    )["items"]  # fmt: skip
    assert any(e["type"] == "Warning" and e["reason"] != "" for e in events)


def test_ready_says_why_replicas_are_missing(op: Operator) -> None:
    """Causes that used to read as a generic ReplicasNotReady until the progress deadline."""
    op.apply(manifest("no-image", merge(ADDER, {"replicas": 1, "image": "example.invalid/x:1"})))
    op.apply(
        manifest(
            "no-priority",
            merge(ADDER, {"replicas": 1, "scheduling": {"priorityClassName": "missing"}}),
        )
    )
    op.apply(
        manifest("crash", merge(ADDER, {"replicas": 1, "model": {"class": "no_such_module:M"}}))
    )
    c = op.wait_condition("no-image", "Ready", "False", "ErrImageNeverPull", 120)
    assert "example.invalid/x:1" in c["message"]
    op.wait_condition("no-image", "Degraded", "True", "ErrImageNeverPull")
    row = op.kubectl("get", "msvc", "no-image", "--no-headers").stdout.split()
    assert row[1:3] == ["False", "ErrImageNeverPull"]
    c = op.wait_condition("no-priority", "Ready", "False", "FailedCreate", 120)
    assert "missing" in c["message"]
    op.wait_condition("crash", "ModelLoadFailed", "True", "ContainerFailed", 120)

    # A crash loop: the kubelet restarts the container again and again (reason Error, then
    # CrashLoopBackOff, then Error ...); the conditions and their Events stay put.
    def restarts() -> int:
        pods = op.items("pods", "serving.shoal.dev/model=crash")
        return sum(
            cs.get("restartCount", 0)
            for p in pods
            for cs in p["status"].get("containerStatuses") or []
        )

    cluster_wait(op, lambda: restarts() >= 3, "three restarts", 120)
    events = json.loads(
        op.kubectl(
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=ModelService,involvedObject.name=crash",
            "-o",
            "json",
        ).stdout
    )["items"]
    keys = [(e["reason"], e["message"]) for e in events]
    assert len(keys) == len(set(keys)), keys  # a repeat is counted on its Event, not re-posted
    # One ModelLoadFailed Event through all the restarts (the reason no longer flips).
    assert len([k for k in keys if k[0] == "ContainerFailed"]) <= 1, keys
    c = op.condition("crash", "ModelLoadFailed") or {}
    assert c["reason"] == "ContainerFailed"


def test_objects_being_deleted_are_left_alone(op: Operator) -> None:
    op.apply(manifest("going", merge(ADDER, {"replicas": 0})))
    op.wait_condition("going", "Ready", "True", "ScaledToZero")
    # A finalizer of someone else's keeps the object, with a deletionTimestamp, until removed.
    op.kubectl(
        "patch",
        "msvc",
        "going",
        "--type=merge",
        "-p",
        '{"metadata":{"finalizers":["test.shoal.dev/hold"]}}',
    )
    op.kubectl("delete", "msvc", "going", "--wait=false")
    op.kubectl("delete", "service", "going")
    passes = op.reconciler.passes
    op.poke("going")
    op.wait_passes(passes + 1)
    assert op.get("service", "going") is None  # not recreated for an object on its way out
    op.kubectl("patch", "msvc", "going", "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    cluster_wait(op, lambda: op.get("msvc", "going") is None, "the ModelService gone")


def test_operator_restart_resumes_without_churn(
    crds: Any, k8s_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(crds.kubeconfig))
    settings = operator_settings(k8s_namespace)
    with running_operator(crds, k8s_namespace, settings) as op:
        op.apply(manifest("steady", merge(ADDER, {"replicas": 1})))
        op.wait_condition("steady", "Ready", "True", "AllReplicasReady", 180)
        op.wait_condition("steady", "Progressing", "False", "RolloutComplete")
        before = _snapshot(op, "steady")
    with running_operator(crds, k8s_namespace, settings) as op:
        op.wait_passes(1)  # the pass that follows the initial listing
        after = _snapshot(op, "steady")
        assert after == before
    # No operator runs now: deletion does not wait for it (no finalizer).
    crds.kubectl("-n", k8s_namespace, "delete", "msvc", "steady", "--wait=true", "--timeout=20s")


def _snapshot(op: Operator, name: str) -> dict[str, Any]:
    dep = op.get("deployment", name) or {}
    msvc = op.get("msvc", name) or {}
    rs = op.items("replicasets", f"serving.shoal.dev/model={name}")
    pods = op.items("pods", f"serving.shoal.dev/model={name}")
    return {
        "deployment": (dep["metadata"]["resourceVersion"], dep["metadata"]["generation"]),
        "service": (op.get("service", name) or {})["metadata"]["resourceVersion"],
        "replicasets": sorted(r["metadata"]["name"] for r in rs),
        "pods": sorted(p["metadata"]["uid"] for p in pods),
        "conditions": msvc["status"]["conditions"],
    }


def test_registry_alias_resolves_and_rolls(
    crds: Any, k8s_namespace: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("adder")
    for i in (1, 2):
        client.create_model_version("adder", source=str(tmp_path / f"v{i}"))
    client.set_registered_model_alias("adder", "champion", "1")
    monkeypatch.setenv("KUBECONFIG", str(crds.kubeconfig))
    settings = operator_settings(k8s_namespace, mlflow_tracking_uri=uri, alias_poll_seconds=30)
    spec = merge(ADDER, {"model": {"uri": "models:/adder@champion"}, "replicas": 0})
    clock = FakeClock()
    with running_operator(crds, k8s_namespace, settings) as op:
        op.reconciler.monotonic = clock
        op.apply(manifest("champion", spec))
        op.wait_status("champion", lambda s: s.get("modelVersion") == "1", "version 1")
        assert deployment_env(op, "champion")["SHOAL_MODEL_URI"] == "models:/adder/1"
        assert deployment_env(op, "champion")["MLFLOW_TRACKING_URI"] == uri
        client.set_registered_model_alias("adder", "champion", "2")
        # Before the poll interval a pass keeps the resolved version; after it, the next pass
        # resolves again (the interval runs on the injected clock, not in real time).
        clock.advance(29)
        passes = op.reconciler.passes
        op.poke("champion")
        op.wait_passes(passes + 1)
        assert (op.get("msvc", "champion") or {})["status"]["modelVersion"] == "1"
        clock.advance(1)
        op.poke("champion")
        op.wait_status("champion", lambda s: s.get("modelVersion") == "2", "version 2", 60)
        cluster_wait(
            op,
            lambda: deployment_env(op, "champion").get("SHOAL_MODEL_URI") == "models:/adder/2",
            "the pod template follows the alias",
        )
        c = op.wait_condition("champion", "ModelResolved", "True", "Resolved")
        assert "version 2" in c["message"]
        op.kubectl("delete", "msvc", "champion", "--wait=true", "--timeout=90s")
