"""Node objects and their Leases: what makes the control plane believe a kubelet is alive."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import platform
import uuid

from e2e.kube import ApiError, Kube, Obj
from e2e.layout import GPUS_PER_GPU_NODE

log = logging.getLogger(__name__)

LEASE_DURATION_S = 40
LEASE_RENEW_S = 10.0
K8S_VERSION = "v1.36.3"
GPU_RESOURCE = "nvidia.com/gpu"


def _micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_object(name: str, gpu: bool, host_ip: str, pod_cidr: str) -> Obj:
    capacity = {
        "cpu": "16",
        "memory": "64Gi",
        "pods": "110",
        "ephemeral-storage": "100Gi",
    }
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": "shoal-e2e-gpu" if gpu else "shoal-e2e-cpu",
        "shoal.dev/e2e-node": "true",
    }
    taints = []
    if gpu:
        capacity[GPU_RESOURCE] = str(GPUS_PER_GPU_NODE)
        labels |= {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.count": str(GPUS_PER_GPU_NODE),
            "nvidia.com/gpu.product": "Shoal-E2E-Fake-GPU",
        }
        taints.append({"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"})
    now = _now()

    def cond(ctype: str, status: str, reason: str, message: str) -> Obj:
        return {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }

    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr], "taints": taints},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
                cond("Ready", "True", "KubeletReady", "shoal process kubelet is posting ready"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": host_ip},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": uuid.uuid4().hex,
                "systemUUID": str(uuid.uuid4()),
                "bootID": str(uuid.uuid4()),
                "kernelVersion": platform.release(),
                "osImage": "shoal e2e process kubelet",
                "containerRuntimeVersion": "shoal-process://0.1.0",
                "kubeletVersion": K8S_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


async def register(kube: Kube, node: Obj) -> None:
    name = node["metadata"]["name"]
    try:
        await kube.create("/api/v1/nodes", node)
    except ApiError as exc:
        if exc.status != 409:
            raise
        await kube.merge_patch(f"/api/v1/nodes/{name}", {"metadata": node["metadata"]})
    # Status on create is kept for nodes, but write it once more to be independent of that.
    await kube.merge_patch(f"/api/v1/nodes/{name}/status", {"status": node["status"]})


async def keep_lease(kube: Kube, name: str, stop: asyncio.Event) -> None:
    """Creates and renews the node's Lease in kube-node-lease until stop is set."""
    path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
    while not stop.is_set():
        try:
            await _renew(kube, name, path)
        except Exception as exc:
            log.warning("lease of node %s not renewed: %s", name, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LEASE_RENEW_S)


async def _renew(kube: Kube, name: str, path: str) -> None:
    spec = {
        "holderIdentity": name,
        "leaseDurationSeconds": LEASE_DURATION_S,
        "renewTime": _micro_now(),
    }
    if await kube.merge_patch(path, {"spec": spec}) is not None:
        return
    node = await kube.get(f"/api/v1/nodes/{name}")
    owner = []
    if node is not None:
        owner = [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}]
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease", "ownerReferences": owner},
        "spec": spec,
    }
    await kube.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease)
