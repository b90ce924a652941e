"""ModelServices whose replicas run on the real nodes, from Shoal's image, with the operator
running as a process of the test (tests/operator/operator_harness.py): what the process kubelet
cannot show (image, security context, memory limit, SIGTERM from a real kubelet, a device)."""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.fixtures import RealNodes
from shoal.runtime.testing import shoal_command
from tests.operator.operator_harness import (
    Load,
    Operator,
    infer_v2,
    install_crds,
    manifest,
    operator_settings,
    running_operator,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ADDER: dict[str, Any] = {
    "model": {"class": "examples.adder:Adder", "config": {"increment": 1}},
    "replicas": 2,
    "imagePullPolicy": "IfNotPresent",
    "batching": {"maxBatchSize": 8, "batchWaitTimeoutMs": 2},
    "resources": {"cpu": "250m", "memory": "256Mi"},
    "health": {"startupTimeoutSeconds": 120, "readinessPeriodSeconds": 1},
    "drain": {"delaySeconds": 3, "gracePeriodSeconds": 10},
}
KEEP = "shoal.dev/e2e-keep"  # a finalizer that keeps a deleted pod to read its exit code


@pytest.fixture
def op(
    k8s_cluster: Cluster,
    k8s_namespace: str,
    k8s_real_nodes: RealNodes,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Operator]:
    install_crds(k8s_cluster)
    monkeypatch.setenv("KUBECONFIG", str(k8s_cluster.kubeconfig))
    settings = operator_settings(
        k8s_namespace, default_image=k8s_real_nodes.image, image_pull_policy="IfNotPresent"
    )
    with running_operator(k8s_cluster, k8s_namespace, settings) as operator:
        yield operator
        operator.kubectl("delete", "msvc", "--all", "--wait=true", "--timeout=90s")


def on_real_node(real: RealNodes, spec: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    out["scheduling"] = {"nodeSelector": real.node_selector, "tolerations": [real.toleration]}
    return out


def _pods(op: Operator, name: str) -> list[dict[str, Any]]:
    return [
        p
        for p in op.items("pods", f"serving.shoal.dev/model={name}")
        if not p["metadata"].get("deletionTimestamp")
    ]


def _exec(op: Operator, pod: str, *argv: str, check: bool = True) -> Any:
    return op.kubectl("exec", pod, "--", *argv, check=check)


@contextlib.contextmanager
def gateway(cluster: Cluster, namespace: str, workdir: Path) -> Iterator[str]:
    """`shoal gateway --kubernetes` on the host (the bridge address); yields its host:port."""
    port_file, log_file = workdir / "gateway.port", workdir / "gateway.log"
    argv = [*shoal_command(), "gateway", "--kubernetes", "--kubeconfig", str(cluster.kubeconfig)]
    argv += ["--namespace", namespace, "--host", cluster.host_ip, "--port", "0"]
    with log_file.open("wb") as log:
        proc = subprocess.Popen([*argv, "--port-file", str(port_file)], stdout=log, stderr=log)
    try:

        def port() -> str | None:
            assert proc.poll() is None, log_file.read_text(errors="replace")[-3000:]
            return port_file.read_text().strip() if port_file.exists() else None

        yield f"{cluster.host_ip}:{cluster.wait_for(port, 30, 'the gateway port file')}"
    finally:
        proc.terminate()
        proc.wait(15)


def infer_v1(ip: str, model: str, instances: list[int]) -> list[int]:
    host = ip if ":" in ip else f"{ip}:8000"
    req = urllib.request.Request(
        f"http://{host}/v1/models/{model}:predict",
        data=json.dumps({"instances": instances}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        out: list[int] = json.loads(resp.read())["predictions"]
    return out


def _time(stamp: str) -> datetime.datetime:
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def test_replicas_run_from_the_image_confined_and_drain_on_sigterm(
    op: Operator, k8s_real_nodes: RealNodes, tmp_path: Path
) -> None:
    op.apply(manifest("adder", on_real_node(k8s_real_nodes, ADDER)))
    op.wait_condition("adder", "Ready", "True", "AllReplicasReady", timeout=240)
    pods = _pods(op, "adder")
    assert {p["spec"]["nodeName"] for p in pods} <= set(k8s_real_nodes.nodes)
    for p in pods:
        (status,) = p["status"]["containerStatuses"]
        assert status["containerID"].startswith("containerd://")
        ip = p["status"]["podIP"]
        assert infer_v2(ip, "adder", [1, 2, 3]) == [2, 3, 4]
        assert infer_v1(ip, "adder", [5]) == [6]
    # Through the gateway, which finds the replicas from the EndpointSlices like any others.
    with gateway(op.cluster, op.namespace, tmp_path) as gw:
        op.cluster.wait_for(
            lambda: infer_v1(gw, "adder", [0]) == [1], 60, "the gateway to route to adder"
        )
        for _ in range(2 * len(pods)):
            assert infer_v1(gw, "adder", [7, 8]) == [8, 9]
        body = json.dumps(
            {"inputs": [{"name": "x", "shape": [2], "datatype": "INT64", "data": [1, 2]}]}
        ).encode()
        req = urllib.request.Request(f"http://{gw}/v2/models/adder/infer", data=body)
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read())["outputs"][0]["data"] == [2, 3]

    # The operator's security context, enforced by runc.
    name = pods[0]["metadata"]["name"]
    assert _exec(op, name, "id", "-u").stdout.strip() == "1000"
    write = _exec(op, name, "python3", "-c", "open('/x', 'w')", check=False)
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr
    caps = _exec(op, name, "grep", "^CapEff", "/proc/1/status").stdout.split()
    assert caps[1] == "0" * 16
    assert _exec(op, name, "sh", "-c", "echo ok > /tmp/w && cat /tmp/w").stdout.strip() == "ok"
    assert op.kubectl("logs", name).stdout.strip()

    # SIGTERM from the real kubelet: preStop (sleep), drain, exit 0, no request lost.
    op.kubectl(
        "patch", "pod", name, "--type=merge", "-p", json.dumps({"metadata": {"finalizers": [KEEP]}})
    )
    try:
        with Load(op, "adder", [1, 2, 3]) as load:
            op.cluster.wait_for(lambda: load.ok >= 20, 60, "20 answers before the deletion")
            # This clock, not deletionTimestamp: the kubelet's final delete (grace 0) resets it.
            deleted = datetime.datetime.now(datetime.UTC)
            op.kubectl("delete", "pod", name, "--wait=false")

            def terminated() -> dict[str, Any] | None:
                pod = op.get("pod", name) or {}
                for cs in pod.get("status", {}).get("containerStatuses") or []:
                    term = (cs.get("state") or {}).get("terminated")
                    if term:
                        return dict(term)
                return None

            done = op.cluster.wait_for(terminated, 90, f"pod {name} to terminate")
            op.cluster.wait_for(lambda: load.ok >= 60, 60, "more answers after the deletion")
        assert load.failures == []
        assert done["exitCode"] == 0
        # The preStop sleep ran before SIGTERM (finishedAt has whole seconds).
        pre_stop = ADDER["drain"]["delaySeconds"]
        assert (_time(done["finishedAt"]) - deleted).total_seconds() >= pre_stop - 1
    finally:
        op.kubectl(
            "patch", "pod", name, "--type=json",
            "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]', check=False,
        )  # fmt: skip


def test_a_memory_limit_below_need_is_oomkilled_and_reported(
    op: Operator, k8s_real_nodes: RealNodes
) -> None:
    spec = on_real_node(k8s_real_nodes, ADDER)
    spec["replicas"] = 1
    spec["resources"] = {"cpu": "250m", "memory": "24Mi"}  # python + numpy + uvicorn need more
    op.apply(manifest("tight", spec))

    def oom_killed() -> dict[str, Any] | None:
        for p in _pods(op, "tight"):
            for cs in p.get("status", {}).get("containerStatuses") or []:
                for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                    term = state.get("terminated")
                    if term and term.get("reason") == "OOMKilled":
                        return dict(term)
        return None

    term = op.cluster.wait_for(oom_killed, 180, "the replica to be OOMKilled")
    assert term["exitCode"] == 137
    cond = op.wait_condition("tight", "ModelLoadFailed", "True", timeout=90)
    assert "OOMKilled" in cond["message"], cond
    ready = op.condition("tight", "Ready") or {}
    assert ready.get("status") == "False"


def test_a_gpu_modelservice_lands_on_the_gpu_real_node_and_gets_its_device(
    op: Operator, k8s_real_nodes: RealNodes
) -> None:
    spec = on_real_node(k8s_real_nodes, ADDER)
    spec["replicas"] = 1
    spec["resources"] = {"cpu": "250m", "memory": "256Mi", "gpu": 1}
    op.apply(manifest("gpu", spec))
    op.wait_condition("gpu", "Ready", "True", "AllReplicasReady", timeout=240)
    (pod,) = _pods(op, "gpu")
    assert pod["spec"]["nodeName"] in k8s_real_nodes.gpu_nodes
    name = pod["metadata"]["name"]
    env = _exec(op, name, "sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES").stdout.strip()
    node = pod["spec"]["nodeName"]
    assert env.startswith(f"GPU-{node}-")
    assert "," not in env  # one device asked, one given
    index = env.rsplit("-", 1)[1]
    assert _exec(op, name, "test", "-c", f"/dev/nvidia{index}", check=False).returncode == 0
    assert _exec(op, name, "cat", f"/run/shoal-gpu/{env}").stdout.strip() == env
    assert infer_v2(pod["status"]["podIP"], "gpu", [1]) == [2]
    node_obj = op.cluster.get_json("node", node)
    assert node_obj["status"]["allocatable"]["nvidia.com/gpu"] == "2"
