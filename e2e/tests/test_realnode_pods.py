"""What only a real node can show: pods from an image under containerd and runc, with their
security context and limits enforced, `kubectl logs`/`exec`, Services and DNS from containerd's
network namespaces, and a kubelet that holds only its own node's identity."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.fixtures import RealNodes
from e2e.tests import manifests

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

UID = 1000
START = "print('serving on', __import__('os').environ['POD_IP'], flush=True)\n"


def real_pod(real: RealNodes, name: str, container: dict[str, Any], **spec: Any) -> str:
    """A pod that asks for the real CPU node (toleration + node selector)."""
    return manifests.pod(
        name,
        [container],
        tolerations=[real.toleration],
        nodeSelector=real.node_selector,
        terminationGracePeriodSeconds=2,
        **spec,
    )


def confined_server(real: RealNodes) -> dict[str, Any]:
    return manifests.server_container(
        image=real.image,
        imagePullPolicy="IfNotPresent",
        command=["python3", "-c", START + manifests.SERVER],
        securityContext={
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        resources={"limits": {"memory": "128Mi", "cpu": "200m"}},
    )


def _exec(cluster: Cluster, ns: str, pod: str, *argv: str, check: bool = True) -> Any:
    return cluster.kubectl("exec", "-n", ns, pod, "--", *argv, check=check)


def test_a_pod_from_the_image_runs_confined(
    k8s_cluster: Cluster, k8s_namespace: str, k8s_real_nodes: RealNodes
) -> None:
    ns = k8s_namespace
    k8s_cluster.apply(ns, real_pod(k8s_real_nodes, "web", confined_server(k8s_real_nodes)))
    k8s_cluster.kubectl("wait", "-n", ns, "pod/web", "--for=condition=Ready", "--timeout=120s")
    pod = k8s_cluster.get_json("pod", "-n", ns, "web")
    assert pod["spec"]["nodeName"] in k8s_real_nodes.nodes
    (status,) = pod["status"]["containerStatuses"]
    assert status["containerID"].startswith("containerd://")
    assert status["imageID"].startswith("sha256:") or "@sha256:" in status["imageID"]

    # Answers from its pod IP (the host reaches pods on the slot's bridge).
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/", timeout=10) as resp:
        assert json.loads(resp.read())["pod"] == "web"
    # kubectl logs and exec go through the API server to this node's kubelet.
    logs = k8s_cluster.kubectl("logs", "-n", ns, "web").stdout
    assert f"serving on {pod['status']['podIP']}" in logs
    assert _exec(k8s_cluster, ns, "web", "id", "-u").stdout.strip() == str(UID)
    write = _exec(k8s_cluster, ns, "web", "touch", "/x", check=False)
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr
    caps = _exec(k8s_cluster, ns, "web", "grep", "^Cap", "/proc/1/status").stdout
    assert {line.split()[0]: line.split()[1] for line in caps.splitlines()}["CapEff:"] == "0" * 16
    limit = _exec(
        k8s_cluster, ns, "web", "sh", "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || "
        "cat /sys/fs/cgroup/memory.max",
    ).stdout.strip()  # fmt: skip
    assert limit == str(128 * 1024 * 1024)


def test_services_and_dns_work_from_a_real_node(
    k8s_cluster: Cluster, k8s_namespace: str, k8s_real_nodes: RealNodes
) -> None:
    ns = k8s_namespace
    # A server on a process-kubelet node, reached by name from a pod on the real node.
    k8s_cluster.apply(ns, manifests.deployment("web", 1, manifests.server_container()))
    k8s_cluster.apply(ns, manifests.service("web"))
    k8s_cluster.kubectl("rollout", "status", "-n", ns, "deploy/web", "--timeout=90s")
    program = (
        "import json, urllib.request\n"
        "doc = json.load(urllib.request.urlopen('http://web/', timeout=10))\n"
        "print('answered by', doc['pod'])\n"
    )
    client = {
        "name": "client",
        "image": k8s_real_nodes.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-c", program],
        "securityContext": {"runAsUser": UID, "readOnlyRootFilesystem": True},
    }
    k8s_cluster.apply(ns, real_pod(k8s_real_nodes, "client", client, restartPolicy="Never"))

    def finished() -> str | None:
        phase: str | None = k8s_cluster.get_json("pod", "-n", ns, "client")["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = k8s_cluster.wait_for(finished, 120, "the client pod to finish")
    logs = k8s_cluster.kubectl("logs", "-n", ns, "client").stdout
    assert phase == "Succeeded", logs
    assert "answered by web-" in logs
    resolv = k8s_cluster.get_json("pod", "-n", ns, "client")
    assert resolv["spec"]["nodeName"] in k8s_real_nodes.nodes


def test_a_kubelet_holds_only_its_own_node_identity(
    k8s_cluster: Cluster, k8s_real_nodes: RealNodes
) -> None:
    name = k8s_real_nodes.nodes[0]
    kubeconfig = str(k8s_cluster.run_dir / "pki" / f"node-{name}.kubeconfig")
    whoami = k8s_cluster.kubectl("--kubeconfig", kubeconfig, "auth", "whoami", "-o", "json")
    info = json.loads(whoami.stdout)["status"]["userInfo"]
    assert info["username"] == f"system:node:{name}"
    assert "system:nodes" in info["groups"]
    own = k8s_cluster.kubectl(
        "--kubeconfig", kubeconfig, "label", "node", name, "shoal.dev/probe=1", "--overwrite"
    )
    assert own.returncode == 0
    # NodeRestriction: another node's object is out of reach.
    other = k8s_cluster.kubectl(
        "--kubeconfig", kubeconfig, "label", "node", "cpu-0", "shoal.dev/probe=1", check=False
    )
    assert other.returncode != 0
    assert "Forbidden" in other.stderr or "forbidden" in other.stderr
    k8s_cluster.kubectl("label", "node", name, "shoal.dev/probe-")
