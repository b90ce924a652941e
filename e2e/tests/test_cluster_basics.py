"""The cluster itself: API server ready, nodes registered with the expected shape."""

from __future__ import annotations

import pytest

from e2e.cluster import Cluster

pytestmark = pytest.mark.e2e


def test_readyz_ok(k8s_cluster: Cluster) -> None:
    out = k8s_cluster.kubectl("get", "--raw", "/readyz")
    assert out.stdout.strip() == "ok"


def test_kubectl_reports_the_pinned_version(k8s_cluster: Cluster) -> None:
    out = k8s_cluster.kubectl("version", "-o", "json")
    assert '"gitVersion": "v1.36.3"' in out.stdout


def test_nodes_two_cpu_two_gpu_all_ready(k8s_cluster: Cluster) -> None:
    """The process kubelet's nodes (real nodes, when the session runs them, are tainted so
    that no pod lands there unless it asks: see test_realnode_pods.py)."""
    nodes = k8s_cluster.get_json("nodes", "-l", "shoal.dev/e2e-node=true")["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    assert sorted(by_name) == ["cpu-0", "cpu-1", "gpu-0", "gpu-1"]
    for name, node in by_name.items():
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready[0]["status"] == "True", name
        taints = {t["key"]: t for t in node["spec"].get("taints") or []}
        if name.startswith("gpu"):
            assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
            assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
            assert taints["nvidia.com/gpu"]["effect"] == "NoSchedule"
        else:
            assert "nvidia.com/gpu" not in node["status"]["allocatable"]
            assert not taints
