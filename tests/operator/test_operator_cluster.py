"""The operator against the real API server, scheduler and controllers of the local control
plane (e2e/), with pods run by the process kubelet from the local Shoal install."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import (
    FakeClock,
    Load,
    Operator,
    infer_v2,
    install_crds,
    manifest,
    operator_settings,
    running_operator,
)

from shoal.operator import rbac

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

HERE = Path(__file__).parent
OWNED = ("deployment", "service", "serviceaccount", "poddisruptionbudget")
DRIFT_DEADLINE = 10.0
"""Repair takes well under 2 s on an idle machine (bench/RESULTS.md); slack for a loaded one."""
_SELECTOR_EDIT = '{"spec":{"selector":{"serving.shoal.dev/model":"other"}}}'
TABLE = yaml.safe_load((HERE / "invalid_manifests.yaml").read_text())
ADDER = {
    "model": {"class": "examples.adder:Adder", "config": {"increment": 1}},
    "replicas": 2,
    "batching": {"maxBatchSize": 8, "batchWaitTimeoutMs": 2},
    "health": {"startupTimeoutSeconds": 60, "readinessPeriodSeconds": 1},
    "drain": {"delaySeconds": 3, "gracePeriodSeconds": 5},
}


@pytest.fixture(scope="session")
def crds(k8s_cluster: Any) -> Any:
    install_crds(k8s_cluster)
    return k8s_cluster


@pytest.fixture
def op(crds: Any, k8s_namespace: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Operator]:
    monkeypatch.setenv("KUBECONFIG", str(crds.kubeconfig))
    # The harness's GPU nodes have no devices: let the runtime pick (it finds no CUDA).
    settings = operator_settings(k8s_namespace, gpu_device="auto")
    with running_operator(crds, k8s_namespace, settings) as operator:
        yield operator
        # Delete while the operator still runs: it removes its finalizer (daemon stop) and the
        # garbage collector takes the rest; otherwise namespace deletion would hang.
        operator.kubectl("delete", "msvc", "--all", "--wait=true", "--timeout=90s")


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _case(case: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = copy.deepcopy(TABLE["base"])
    doc["spec"] = _merge(doc["spec"], case.get("patch", {}))
    if "metadata" in case:
        doc["metadata"] = case["metadata"]
    return doc


def test_api_server_rejects_the_invalid_table(crds: Any, k8s_namespace: str) -> None:
    cases = [c for c in TABLE["cases"] if c["rejected_by"] == "schema"]
    assert len(cases) >= 20
    wrong = []
    for case in cases:
        proc = crds.kubectl(
            "apply", "-n", k8s_namespace, "--dry-run=server", "-f", "-",
            input=yaml.safe_dump(_case(case)), check=False,
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
    assert _env(op, "adder").get("FOO") == "bar"

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


def cluster_wait(op: Operator, pred: Any, what: str, timeout: float = 90) -> Any:
    return op.cluster.wait_for(pred, timeout, what)


def _node_labels(op: Operator, node: str) -> dict[str, str]:
    obj = op.cluster.get_json("node", node)
    labels: dict[str, str] = obj["metadata"].get("labels") or {}
    return labels


def test_gpu_replicas_land_on_gpu_nodes_and_unschedulable_is_reported(op: Operator) -> None:
    gpu = _merge(ADDER, {"resources": {"gpu": 1}, "replicas": 2})
    op.apply(manifest("gpu", gpu))
    op.apply(manifest("too-many-gpus", _merge(ADDER, {"resources": {"gpu": 16}, "replicas": 1})))
    op.wait_status("gpu", lambda s: s.get("readyReplicas") == 2, "2 ready GPU replicas", 180)
    pods = op.items("pods", "serving.shoal.dev/model=gpu")
    assert len(pods) == 2
    for p in pods:
        labels = _node_labels(op, p["spec"]["nodeName"])
        assert labels.get("nvidia.com/gpu.present") == "true", p["spec"]["nodeName"]
        limits = p["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"
    # A CPU-only model never lands on a (tainted) GPU node.
    op.apply(manifest("cpu", _merge(ADDER, {"replicas": 2})))
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
        doc = _case(case)
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
    op.apply(manifest("no-image", _merge(ADDER, {"replicas": 1, "image": "example.invalid/x:1"})))
    op.apply(
        manifest(
            "no-priority",
            _merge(ADDER, {"replicas": 1, "scheduling": {"priorityClassName": "missing"}}),
        )
    )
    op.apply(
        manifest("crash", _merge(ADDER, {"replicas": 1, "model": {"class": "no_such_module:M"}}))
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
    op.apply(manifest("going", _merge(ADDER, {"replicas": 0})))
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
        op.apply(manifest("steady", _merge(ADDER, {"replicas": 1})))
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
    spec = _merge(ADDER, {"model": {"uri": "models:/adder@champion"}, "replicas": 0})
    clock = FakeClock()
    with running_operator(crds, k8s_namespace, settings) as op:
        op.reconciler.monotonic = clock
        op.apply(manifest("champion", spec))
        op.wait_status("champion", lambda s: s.get("modelVersion") == "1", "version 1")
        assert _env(op, "champion")["SHOAL_MODEL_URI"] == "models:/adder/1"
        assert _env(op, "champion")["MLFLOW_TRACKING_URI"] == uri
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
            lambda: _env(op, "champion").get("SHOAL_MODEL_URI") == "models:/adder/2",
            "the pod template follows the alias",
        )
        c = op.wait_condition("champion", "ModelResolved", "True", "Resolved")
        assert "version 2" in c["message"]
        op.kubectl("delete", "msvc", "champion", "--wait=true", "--timeout=90s")


def _env(op: Operator, name: str) -> dict[str, str]:
    dep = op.get("deployment", name) or {}
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in c["env"]}


def _restricted_kubeconfig(cluster: Any, path: Path, namespace: str) -> Path:
    """A kubeconfig for the operator's own ServiceAccount (rbac.manifests) in `namespace`."""
    token = cluster.kubectl(
        "create", "token", rbac.SERVICE_ACCOUNT, "-n", namespace, "--duration=1h"
    ).stdout.strip()
    cfg = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    for user in cfg["users"]:
        user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _can_i(cluster: Any, sa: str, verb: str, resource: str, *where: str) -> str:
    """`kubectl auth can-i` as `sa`; `resource/sub` asks about the subresource (kubectl would
    read `resource/NAME`)."""
    resource, _, sub = resource.partition("/")
    extra = [f"--subresource={sub}"] if sub else []
    proc = cluster.kubectl(
        "auth", "can-i", verb, resource, *extra, *where, f"--as={sa}", check=False
    )
    return str(proc.stdout.strip())


def test_namespaced_rbac_grants_nothing_outside_its_namespaces(
    crds: Any, k8s_namespace: str
) -> None:
    docs = rbac.manifests(namespace=k8s_namespace, watched=[k8s_namespace])
    assert {d["kind"] for d in docs} == {"ServiceAccount", "Role", "RoleBinding"}
    crds.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    sa = f"system:serviceaccount:{k8s_namespace}:{rbac.SERVICE_ACCOUNT}"
    inside = ["-n", k8s_namespace]
    for verb, resource, allowed in [
        ("patch", "deployments.apps", "yes"),
        ("create", "deployments.apps", "yes"),
        ("patch", "modelservices.serving.shoal.dev/status", "yes"),
        ("update", "modelservices.serving.shoal.dev/finalizers", "yes"),
        ("list", "pods", "yes"),
        ("delete", "deployments.apps", "no"),
        ("get", "secrets", "no"),
        ("update", "modelservices.serving.shoal.dev", "no"),
        ("create", "events.events.k8s.io", "no"),
    ]:
        assert _can_i(crds, sa, verb, resource, *inside) == allowed, (verb, resource)
    for verb, resource in [
        ("patch", "deployments.apps"),
        ("create", "deployments.apps"),
        ("patch", "services"),
        ("patch", "serviceaccounts"),
        ("list", "pods"),
        ("list", "modelservices.serving.shoal.dev"),
    ]:
        assert _can_i(crds, sa, verb, resource, "-n", "kube-system") == "no", (verb, resource)
        assert _can_i(crds, sa, verb, resource, "--all-namespaces") == "no", (verb, resource)
    assert _can_i(crds, sa, "get", "clusterkopfpeerings.kopf.dev") == "no"


def test_cli_without_standalone_or_peering_object_fails_at_start(
    crds: Any, k8s_namespace: str
) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "shoal.operator", "-n", k8s_namespace, "--liveness", ""],
        env={**crds.env}, cwd=HERE.parents[1], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]  # after the start line, one line says why
    assert line.startswith("shoal operator: no KopfPeering")
    assert f"no KopfPeering in namespace {k8s_namespace}" in line
    assert "--standalone" in line


def test_cli_operator_with_its_rbac_and_peering(
    crds: Any, k8s_namespace: str, tmp_path: Path
) -> None:
    """Two replicas under the namespaced Role (the OwnerReferencesPermissionEnforcement
    admission plugin is on, so blockOwnerDeletion needs modelservices/finalizers): one acts;
    when it is killed the other takes over within the peering lifetime."""
    import subprocess
    import sys
    import time
    import urllib.request

    root = HERE.parents[1]
    docs = rbac.manifests(namespace=k8s_namespace, watched=[k8s_namespace])
    crds.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    crds.kubectl(
        "apply", "-n", k8s_namespace, "-f", "-",
        input=yaml.safe_dump(
            {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
             "metadata": {"name": "shoal-operator"}}
        ),
    )  # fmt: skip
    kubeconfig = _restricted_kubeconfig(crds, tmp_path / "operator.kubeconfig", k8s_namespace)
    env = {**crds.env, "KUBECONFIG": str(kubeconfig)}
    ports = [_free_port(), _free_port()]
    procs = []
    logs = []
    try:
        for prio, port in zip((20, 10), ports, strict=True):
            log = (tmp_path / f"operator-{prio}.log").open("w")
            logs.append(tmp_path / f"operator-{prio}.log")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "shoal.operator", "-n", k8s_namespace,
                     "--priority", str(prio), "--liveness", f"http://127.0.0.1:{port}/healthz",
                     "--gpu-device", "auto"],
                    env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip

        def live(port: int) -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        crds.wait_for(lambda: live(ports[0]) and live(ports[1]), 60, "both liveness endpoints")

        def peers() -> int:
            obj = crds.get_json("kopfpeering", "shoal-operator", "-n", k8s_namespace)
            return len(obj.get("status") or {})

        crds.wait_for(lambda: peers() == 2, 60, "both replicas in the KopfPeering")
        cli_op = Operator(crds, k8s_namespace, reconciler=None, runner=None)
        cli_op.apply(manifest("via-cli", _merge(ADDER, {"replicas": 1})))
        cli_op.wait_condition("via-cli", "Ready", "True", "AllReplicasReady", 180)
        # Only the higher priority acted; the other one stayed paused.
        assert f"[{k8s_namespace}/via-cli] applied" in logs[0].read_text()
        assert "via-cli" not in logs[1].read_text()
        assert "Forbidden" not in logs[0].read_text()
        cli_op.kubectl("delete", "msvc", "via-cli", "--wait=true", "--timeout=90s")

        # The active replica dies without a goodbye: the other resumes within the lifetime.
        procs[0].kill()
        procs[0].wait(timeout=30)
        killed = time.monotonic()
        crds.wait_for(
            lambda: "Resuming operations after the pause" in logs[1].read_text(),
            90,
            "the remaining replica resumes",
        )
        assert time.monotonic() - killed < 15 + 10  # the peering lifetime, plus slack
        cli_op.apply(manifest("after-failover", _merge(ADDER, {"replicas": 1})))
        cli_op.wait_condition("after-failover", "Ready", "True", "AllReplicasReady", 180)
        assert f"[{k8s_namespace}/after-failover] applied" in logs[1].read_text()
        cli_op.kubectl("delete", "msvc", "after-failover", "--wait=true", "--timeout=90s")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _infer_iris(ip: str, name: str) -> list[str]:
    import urllib.request

    body = {
        "inputs": [
            {
                "name": "x",
                "shape": [2, 4],
                "datatype": "FP64",
                "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3],
            }
        ]
    }
    req = urllib.request.Request(
        f"http://{ip}:8000/v2/models/{name}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        outputs = {o["name"]: o for o in json.loads(resp.read())["outputs"]}
    classes: list[str] = outputs["class"]["data"]
    return classes


def test_examples_become_ready_and_answer_v2(op: Operator) -> None:
    examples = HERE.parents[1] / "examples"
    for name in ("iris", "iris-gpu", "adder"):
        op.kubectl("apply", "-f", str(examples / f"{name}.yaml"))
    op.wait_status("adder", lambda s: s.get("readyReplicas") == 2, "2 ready", 240)
    for ip in op.ready_pod_ips("adder"):
        assert infer_v2(ip, "adder", [1, 2, 3]) == [2, 3, 4]
    for name, replicas in (("iris", 2), ("iris-gpu", 1)):
        op.wait_status(
            name, lambda s, n=replicas: s.get("readyReplicas") == n, f"{replicas} ready", 240
        )
        op.wait_condition(name, "Ready", "True", "AllReplicasReady")
        row = op.kubectl("get", "msvc", name, "--no-headers").stdout.split()
        assert row[1:5] == ["True", "AllReplicasReady", str(replicas), str(replicas)]
        ips = op.ready_pod_ips(name)
        assert len(ips) == replicas
        for ip in ips:
            assert _infer_iris(ip, name) == ["setosa", "virginica"]


def test_cli_standalone_operator(crds: Any, k8s_namespace: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    log_path = tmp_path / "operator.log"
    env = {**crds.env, "SHOAL_OPERATOR_GPU_DEVICE": "auto"}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shoal.operator", "-n", k8s_namespace, "--standalone",
             "--liveness", "", "--log-format", "json"],
            env=env, cwd=HERE.parents[1], stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        cli_op = Operator(crds, k8s_namespace, reconciler=None, runner=None)
        cli_op.apply(manifest("solo", _merge(ADDER, {"replicas": 1})))
        cli_op.wait_condition("solo", "Ready", "True", "AllReplicasReady", 180)
        cli_op.kubectl("delete", "msvc", "solo", "--wait=true", "--timeout=90s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(d.get("object") == f"{k8s_namespace}/solo" for d in lines)


def _register_iris(store: Path, *, label_shift: int = 0) -> str:
    """examples.registry in its own process: train, log, register, move @champion."""
    import subprocess
    import sys

    root = HERE.parents[1]
    code = (
        "from examples.registry import register; "
        f"print(register('sqlite:///{store}/mlflow.db', label_shift={label_shift}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=store,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HOME": str(store)},
        capture_output=True,
        text=True,
        timeout=600,  # mlflow's import and a first sqlite migration are slow on a loaded host
        check=True,
    )
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture
def mlflow_store() -> Iterator[Path]:
    """A registry the pods can read: not under /tmp, which is each pod's own emptyDir."""
    import shutil
    import uuid

    store = Path.home() / ".cache" / "shoal-operator-tests" / uuid.uuid4().hex[:8]
    store.mkdir(parents=True)
    yield store
    shutil.rmtree(store, ignore_errors=True)


def test_registry_example_serves_and_rolls_when_the_alias_moves(
    crds: Any, k8s_namespace: str, monkeypatch: pytest.MonkeyPatch, mlflow_store: Path
) -> None:
    """Version 2 is trained with the classes renamed (setosa is 1), so the answer shows which
    version serves: 0 before the alias moves, 1 after, and no request fails in between."""
    assert _register_iris(mlflow_store) == "1"
    monkeypatch.setenv("KUBECONFIG", str(crds.kubeconfig))
    uri = f"sqlite:///{mlflow_store}/mlflow.db"
    settings = operator_settings(k8s_namespace, mlflow_tracking_uri=uri, alias_poll_seconds=30)
    name = "iris-champion"
    row = [5.1, 3.5, 1.4, 0.2]
    clock = FakeClock()
    with running_operator(crds, k8s_namespace, settings) as op:
        op.reconciler.monotonic = clock
        op.kubectl("apply", "-f", str(HERE.parents[1] / "examples" / "registry-alias.yaml"))
        op.wait_condition(name, "Ready", "True", "AllReplicasReady", 240)
        assert (op.get("msvc", name) or {})["status"]["modelVersion"] == "1"
        (ip,) = op.ready_pod_ips(name)
        assert _infer_rows(ip, name, row) == [0]

        with Load(op, name, [], infer=lambda ip, n, _: _infer_rows(ip, n, row)) as load:
            cluster_wait(op, lambda: load.ok >= 10, "answers from version 1")
            assert _register_iris(mlflow_store, label_shift=1) == "2"  # @champion -> 2
            clock.advance(30)  # the alias poll is due
            op.poke(name)
            op.wait_status(name, lambda s: s.get("modelVersion") == "2", "alias moved to 2", 60)
            ready_seen: set[str] = set()

            def rolled() -> bool:
                ready_seen.add((op.condition(name, "Ready") or {}).get("status", "missing"))
                return (1,) in load.answers and _env(op, name)["SHOAL_MODEL_URI"].endswith("/2")

            cluster_wait(op, rolled, "version 2 answers", 240)
            cluster_wait(op, lambda: len(op.ready_pod_ips(name)) == 1, "the old replica gone", 120)
            seen = load.ok
            cluster_wait(op, lambda: load.ok >= seen + 10, "answers after the rollout")
        assert load.failures == []
        assert ready_seen == {"True"}
        assert {(0,), (1,)} == load.answers
        (ip,) = op.ready_pod_ips(name)
        assert _infer_rows(ip, name, row) == [1]
        op.kubectl("delete", "msvc", name, "--wait=true", "--timeout=90s")


def _infer_rows(ip: str, name: str, row: list[float]) -> list[int]:
    import urllib.request

    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": row}]}
    req = urllib.request.Request(
        f"http://{ip}:8000/v2/models/{name}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        data: list[int] = json.loads(resp.read())["outputs"][0]["data"]
    return data
