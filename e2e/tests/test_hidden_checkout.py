"""A volume that covers the checkout (e.g. the replicas' emptyDir at /tmp over a checkout that
lives under /tmp) must not hide the code the process kubelet runs pods from."""

from __future__ import annotations

from typing import Any

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


def _run(cluster: Cluster, ns: str, name: str, read_only: bool) -> tuple[dict[str, Any], str]:
    """Runs the pod to its end; returns its container's terminated state and its log."""
    cluster.apply(ns, _pod(name, read_only))

    def terminated() -> dict[str, Any] | None:
        pod = cluster.get_json("pod", "-n", ns, name)
        for status in pod.get("status", {}).get("containerStatuses") or []:
            term = status.get("state", {}).get("terminated")
            if term:
                return dict(term)
        return None

    term = cluster.wait_for(terminated, 60, f"pod {name} to finish")
    return term, cluster.pod_log(ns, name)


def test_code_stays_visible_under_an_empty_dir_over_the_checkout(
    k8s_cluster: Cluster, k8s_namespace: str
) -> None:
    term, log = _run(k8s_cluster, k8s_namespace, "covered", read_only=False)
    assert term["exitCode"] == 0, log
    assert "code visible True" in log


def test_a_read_only_volume_over_the_checkout_fails_naming_the_cause(
    k8s_cluster: Cluster, k8s_namespace: str
) -> None:
    term, log = _run(k8s_cluster, k8s_namespace, "ro", read_only=True)
    assert term["exitCode"] == 127
    assert "is hidden by one of the pod's volumes" in log
    assert str(REPO_ROOT) in log
