"""A volume that covers the checkout (e.g. the replicas' emptyDir at /tmp over a checkout that
lives under /tmp) must not hide the code the process kubelet runs pods from."""

from __future__ import annotations

import pytest

from e2e.cluster import Cluster
from e2e.kubelet.podspec import REPO_ROOT
from e2e.tests import manifests

pytestmark = pytest.mark.e2e

# The folder that holds the checkout plays the role of /tmp for a checkout under /tmp.
COVER = str(REPO_ROOT.parent if REPO_ROOT.parent != REPO_ROOT.parent.parent else REPO_ROOT)
PROGRAM = "import os, examples.adder, shoal; print('code visible', len(os.listdir('.')) > 0)"


def _pod(name: str, read_only: bool) -> str:
    container = {
        "name": "c",
        "image": "python:3.11-slim",
        "command": ["python", "-c", PROGRAM],
        "volumeMounts": [{"name": "cover", "mountPath": COVER, "readOnly": read_only}],
    }
    return manifests.pod(
        name, [container], restartPolicy="Never", volumes=[{"name": "cover", "emptyDir": {}}]
    )


def _terminated(cluster: Cluster, ns: str, name: str) -> dict[str, object] | None:
    pod = cluster.get_json("pod", "-n", ns, name)
    for status in pod.get("status", {}).get("containerStatuses") or []:
        term = status.get("state", {}).get("terminated")
        if term:
            return dict(term)
    return None


def test_code_stays_visible_under_an_empty_dir_over_the_checkout(
    k8s_cluster: Cluster, k8s_namespace: str
) -> None:
    k8s_cluster.apply(k8s_namespace, _pod("covered", read_only=False))
    term = k8s_cluster.wait_for(
        lambda: _terminated(k8s_cluster, k8s_namespace, "covered"), 60, "the pod to finish"
    )
    log = k8s_cluster.pod_log(k8s_namespace, "covered")
    assert term["exitCode"] == 0, log
    assert "code visible True" in log


def test_a_read_only_volume_over_the_checkout_fails_naming_the_cause(
    k8s_cluster: Cluster, k8s_namespace: str
) -> None:
    k8s_cluster.apply(k8s_namespace, _pod("ro", read_only=True))
    term = k8s_cluster.wait_for(
        lambda: _terminated(k8s_cluster, k8s_namespace, "ro"), 60, "the pod to fail"
    )
    log = k8s_cluster.pod_log(k8s_namespace, "ro")
    assert term["exitCode"] == 127
    assert "is hidden by one of the pod's volumes" in log
    assert str(REPO_ROOT) in log
