"""Shutdown leaves nothing behind, and a crashed run's leftovers are removed by the next owner.

These start their own (second) cluster in a free slot, so they never disturb the session's one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from e2e import cluster as cluster_mod
from e2e.cluster import Cluster
from e2e.layout import Slot
from e2e.tests import manifests
from e2e.tests.test_lifecycle import _alive

pytestmark = pytest.mark.e2e


def _start_with_a_pod(session_cluster: Cluster) -> tuple[Cluster, int]:
    c = cluster_mod.start(follow_parent=True, bin_dir=session_cluster.bin_dir, timeout_s=180)
    manifest = _pod_mounting("p", [MINE, SHARED])
    c.kubectl("apply", "-n", "default", "-f", "-", input=manifest)
    c.kubectl("wait", "-n", "default", "pod/p", "--for=condition=Ready", "--timeout=60s")
    pod = c.get_json("pod", "-n", "default", "p")
    host = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if _in_pod(pid, pod)]
    assert host, "the pod's process was not found"
    return c, host[0]


MINE = "/shoal-e2e-down-test/mine"
SHARED = "/shoal-e2e-down-test/shared"


def _pod_mounting(name: str, paths: list[str]) -> str:
    mounts = [{"name": f"v{i}", "mountPath": p} for i, p in enumerate(paths)]
    volumes = [{"name": f"v{i}", "emptyDir": {}} for i in range(len(paths))]
    return manifests.pod(name, [manifests.server_container(volumeMounts=mounts)], volumes=volumes)


def _in_pod(pid: int, pod: Any) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"POD_IP={pod['status']['podIP']}".encode() in environ


def _down(slot: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "e2e.cluster", "down", f"--slot={slot}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cluster_mod.REPO_ROOT,
    )


def test_down_leaves_nothing_behind(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    c, pod_pid = _start_with_a_pod(k8s_cluster)
    slot = Slot(c.slot)
    # A pod of the session's cluster uses a mount point that the second cluster created.
    shared = _pod_mounting("shared", [SHARED])
    k8s_cluster.kubectl("apply", "-n", k8s_namespace, "-f", "-", input=shared)
    k8s_cluster.kubectl(
        "wait", "-n", k8s_namespace, "pod/shared", "--for=condition=Ready", "--timeout=60s"
    )
    assert cluster_mod.leftovers(slot)  # sanity: the probe sees a running cluster
    out = _down(c.slot)
    assert out.returncode == 0, out.stderr
    assert cluster_mod.leftovers(slot) == []
    assert not _alive(pod_pid)
    assert not _alive(c.pid)
    assert not os.path.exists(MINE)  # mount points it created are gone...
    assert os.path.isdir(SHARED)  # ...except those another running cluster uses
    assert str(slot.root) not in Path("/proc/mounts").read_text()


def test_leftovers_of_a_crashed_run_are_removed(k8s_cluster: Cluster) -> None:
    c, pod_pid = _start_with_a_pod(k8s_cluster)
    slot = Slot(c.slot)
    os.kill(c.pid, signal.SIGKILL)  # the supervisor crashes: no teardown runs
    c.wait_for(lambda: not _alive(c.pid), 30, "the supervisor to die")
    c.wait_for(lambda: not _alive(pod_pid), 30, "the pod process to die with its kubelet")
    left = cluster_mod.leftovers(slot)
    assert any(item.startswith("link shoal-br") for item in left), left
    out = _down(c.slot)
    assert out.returncode == 0, out.stderr
    assert cluster_mod.leftovers(slot) == []
