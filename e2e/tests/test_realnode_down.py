"""`down` removes a real node's processes, containers, mounts and netns, also after the
supervisor crashed. Each test starts its own (second) cluster with real nodes in a free slot."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import pytest

from e2e import cluster as cluster_mod
from e2e.cluster import Cluster
from e2e.fixtures import RealNodes
from e2e.layout import Slot
from e2e.realnode import cleanup
from e2e.tests.test_down import _down
from e2e.tests.test_lifecycle import _alive
from e2e.tests.test_realnode_pods import confined_server, real_pod

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _start_with_a_real_pod(session: Cluster, session_real: RealNodes) -> tuple[Cluster, list[int]]:
    c = cluster_mod.start(
        follow_parent=True, bin_dir=session.bin_dir, timeout_s=300, real_nodes=True
    )
    assert c.real_nodes is not None
    assert "error" not in c.real_nodes, c.real_nodes
    # Its own image: the session's cluster may be an older one (SHOAL_E2E_RUN_DIR).
    real = dataclasses.replace(session_real, image=c.real_nodes["image"])
    c.apply("default", real_pod(real, "web", confined_server(real)))
    c.kubectl("wait", "-n", "default", "pod/web", "--for=condition=Ready", "--timeout=120s")
    pids = cleanup.pod_processes(c.run_dir)
    assert pids, "no container process found in the real node's network namespaces"
    assert cleanup.mounts_under(c.run_dir / "real")
    return c, pids


def _gone(c: Cluster, pids: list[int]) -> None:
    assert cluster_mod.leftovers(Slot(c.slot)) == []
    assert not any(_alive(p) for p in pids)
    assert str(c.run_dir) not in Path("/proc/mounts").read_text()
    assert not (c.run_dir / "real").exists()


def test_down_removes_real_nodes_and_their_containers(
    k8s_cluster: Cluster, k8s_real_nodes: RealNodes
) -> None:
    c, pids = _start_with_a_real_pod(k8s_cluster, k8s_real_nodes)
    out = _down(c.slot)
    assert out.returncode == 0, out.stderr
    _gone(c, pids)


def test_a_crashed_supervisor_leaves_containers_that_the_next_down_removes(
    k8s_cluster: Cluster, k8s_real_nodes: RealNodes
) -> None:
    c, pids = _start_with_a_real_pod(k8s_cluster, k8s_real_nodes)
    os.kill(c.pid, signal.SIGKILL)  # no teardown: kubelet and containerd die with it...
    c.wait_for(lambda: not _alive(c.pid), 30, "the supervisor to die")
    # ...but runc's containers live on (their shim is not a child of the supervisor).
    left = cluster_mod.leftovers(Slot(c.slot))
    assert any(item.startswith("container process") for item in left), left
    assert any(item.startswith("mount ") for item in left), left
    out = _down(c.slot)
    assert out.returncode == 0, out.stderr
    _gone(c, pids)
