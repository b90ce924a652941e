"""GPU scheduling runs through the real scheduler against the process kubelet's nodes."""

from __future__ import annotations

from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.tests import manifests
from e2e.tests.test_workloads import pod_when

pytestmark = pytest.mark.e2e

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def gpu_pod(name: str, gpus: int) -> str:
    container = {
        "name": "c",
        "image": "ghcr.io/shoal-dev/shoal:0.1.0",
        "command": ["python", "-c", "import time; time.sleep(3600)"],
        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
    }
    return manifests.pod(
        name, [container], tolerations=[GPU_TOLERATION], terminationGracePeriodSeconds=1
    )


def test_gpu_pod_lands_on_a_gpu_node(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    ns = k8s_namespace
    k8s_cluster.apply(ns, gpu_pod("gpu1", 1))
    pod = pod_when(k8s_cluster, ns, "gpu1", lambda p: p["status"]["phase"] == "Running")
    assert pod["spec"]["nodeName"] in ("gpu-0", "gpu-1")


def test_too_many_gpus_stays_pending_with_the_schedulers_reason(
    k8s_cluster: Cluster, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    k8s_cluster.apply(ns, gpu_pod("gpu3", 3))

    def unschedulable(p: Any) -> bool:
        conds = p["status"]["conditions"]
        return any(c["type"] == "PodScheduled" and c["status"] == "False" for c in conds)

    pod = pod_when(k8s_cluster, ns, "gpu3", unschedulable)
    cond = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert cond["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")
