"""Container lifecycle: graceful deletion, restarts with exit codes, namespace deletion."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.tests import manifests
from e2e.tests.test_workloads import pod_when

pytestmark = pytest.mark.e2e

# Records each signal and ignores SIGTERM, so only SIGKILL can end it.
STUBBORN = r"""
import os, signal, sys, time
out = sys.argv[1]
def note(line):
    with open(out, "a") as f:
        f.write(line + "\n")
signal.signal(signal.SIGTERM, lambda *a: note("SIGTERM"))
note(f"pid {os.getpid()}")
while True:
    time.sleep(0.1)
"""

# Exits at once on SIGTERM.
POLITE = r"""
import os, signal, sys, time
out = sys.argv[1]
def term(*a):
    with open(out, "a") as f:
        f.write("SIGTERM\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
with open(out, "a") as f:
    f.write(f"pid {os.getpid()}\n")
while True:
    time.sleep(0.1)
"""


def _host_dir(tmp_path: Path) -> Path:
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o777)
    return d


def _pid(record: Path) -> int:
    return int(next(x for x in record.read_text().split("\n") if x.startswith("pid ")).split()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _signal_pod(name: str, script: str, host_dir: Path, grace: int, **container: object) -> str:
    c = {
        "name": "c",
        "image": "python:3.11",
        "command": ["python", "-c", script, "/shared/record"],
        "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
        **container,
    }
    return manifests.pod(
        name,
        [c],
        terminationGracePeriodSeconds=grace,
        volumes=[{"name": "shared", "hostPath": {"path": str(host_dir)}}],
    )


def test_delete_sends_sigterm_then_sigkill_after_grace(
    k8s_cluster: Cluster, k8s_namespace: str, tmp_path: Path
) -> None:
    ns, shared = k8s_namespace, _host_dir(tmp_path)
    k8s_cluster.apply(ns, _signal_pod("stub", STUBBORN, shared, 2))
    pod_when(k8s_cluster, ns, "stub", lambda p: p["status"]["phase"] == "Running")
    record = shared / "record"
    pid = k8s_cluster.wait_for(lambda: record.exists() and _pid(record), 30, "the pod's pid")
    t0 = time.monotonic()
    k8s_cluster.kubectl("delete", "pod", "-n", ns, "stub", "--wait=false")
    k8s_cluster.wait_for(lambda: "SIGTERM" in record.read_text(), 10, "SIGTERM to reach the pod")
    assert _alive(pid)  # SIGTERM ignored: still running inside the grace period
    k8s_cluster.wait_for(lambda: not _alive(pid), 30, f"pid {pid} to be killed")
    assert time.monotonic() - t0 >= 1.5  # killed only once the 2 s grace period ran out
    k8s_cluster.wait_for(
        lambda: k8s_cluster.kubectl("get", "pod", "-n", ns, "stub", check=False).returncode != 0,
        30,
        "pod stub to be removed from the API",
    )


def test_delete_runs_prestop_then_sigterm(
    k8s_cluster: Cluster, k8s_namespace: str, tmp_path: Path
) -> None:
    ns, shared = k8s_namespace, _host_dir(tmp_path)
    pre_stop = {"exec": {"command": ["sh", "-c", "echo preStop >> /shared/record"]}}
    manifest = _signal_pod("polite", POLITE, shared, 30, lifecycle={"preStop": pre_stop})
    k8s_cluster.apply(ns, manifest)
    record = shared / "record"
    pid = k8s_cluster.wait_for(lambda: record.exists() and _pid(record), 60, "the pod's pid")
    k8s_cluster.kubectl("delete", "pod", "-n", ns, "polite", "--wait=false")
    k8s_cluster.wait_for(
        lambda: k8s_cluster.kubectl("get", "pod", "-n", ns, "polite", check=False).returncode != 0,
        20,  # well below the 30 s grace period: the process exited on SIGTERM
        "pod polite to be removed from the API",
    )
    assert not _alive(pid)
    lines = record.read_text().split()
    assert lines[-2:] == ["preStop", "SIGTERM"]


def test_crashing_container_is_restarted_with_exit_code_and_message(
    k8s_cluster: Cluster, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    script = "open('/dev/termination-log', 'w').write('boom'); raise SystemExit(3)"
    c = {
        "name": "c",
        "image": "python:3.11",
        "command": ["python", "-c", script],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    manifest = manifests.pod("crash", [c], volumes=[{"name": "tmp", "emptyDir": {}}])
    k8s_cluster.apply(ns, manifest)

    def restarted(p: Any) -> bool:
        cs = p["status"]["containerStatuses"][0]
        waiting = cs["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"
        return bool(cs["restartCount"] >= 2 and waiting and cs["lastState"].get("terminated"))

    pod = pod_when(k8s_cluster, ns, "crash", restarted)
    cs = pod["status"]["containerStatuses"][0]
    last = cs["lastState"]["terminated"]
    assert last["exitCode"] == 3
    assert last["reason"] == "Error"
    assert last["message"] == "boom"
    assert pod["status"]["phase"] == "Running"
    assert not cs["ready"]
    events = k8s_cluster.get_json("events", "-n", ns, "--field-selector=involvedObject.name=crash")
    reasons = {e["reason"] for e in events["items"]}
    assert {"Scheduled", "Started", "BackOff"} <= reasons


def test_namespace_deletion_cleans_up(k8s_cluster: Cluster) -> None:
    ns = f"t-nsdel-{uuid.uuid4().hex[:6]}"
    k8s_cluster.kubectl("create", "namespace", ns)
    k8s_cluster.wait_for(
        lambda: k8s_cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
        30,
        "default ServiceAccount",
    )
    k8s_cluster.kubectl("create", "configmap", "c", "-n", ns, "--from-literal=a=b")
    k8s_cluster.apply(
        ns,
        manifests.deployment("w", 2, manifests.server_container()),
    )
    pods = k8s_cluster.wait_for(
        lambda: (
            [
                p
                for p in k8s_cluster.get_json("pods", "-n", ns)["items"]
                if p["status"].get("phase") == "Running"
            ][1:]
            and k8s_cluster.get_json("pods", "-n", ns)["items"]
        ),
        60,
        "2 running pods",
    )
    netns = {f"shoal{k8s_cluster.slot}-{p['metadata']['uid'].replace('-', '')[:10]}" for p in pods}
    k8s_cluster.kubectl("delete", "namespace", ns, "--timeout=90s")
    assert k8s_cluster.kubectl("get", "namespace", ns, check=False).returncode != 0
    existing = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert not netns & existing  # the pods' sandboxes are gone too


# First run: starts, never becomes live (liveness kills it). Second run: live, listens on 8080.
PROBED = r"""
import os, socket, time
open("/tmp/started", "w").close()
if not os.path.exists("/tmp/first-run-done"):
    open("/tmp/first-run-done", "w").close()
    while True:
        time.sleep(0.1)
open("/tmp/alive", "w").close()
s = socket.create_server((os.environ["POD_IP"], 8080))
while True:
    s.accept()[0].close()
"""


def test_exec_and_tcp_probes_startup_liveness_readiness(
    k8s_cluster: Cluster, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    c = {
        "name": "c",
        "image": "python:3.11",
        "command": ["python", "-c", PROBED],
        "env": manifests.downward_env(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "startupProbe": {
            "exec": {"command": ["test", "-f", "/tmp/started"]},
            "periodSeconds": 1,
            "failureThreshold": 30,
        },
        "livenessProbe": {
            "exec": {"command": ["test", "-f", "/tmp/alive"]},
            "periodSeconds": 1,
            "failureThreshold": 2,
        },
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
    }
    manifest = manifests.pod(
        "probed", [c], volumes=[{"name": "tmp", "emptyDir": {}}], terminationGracePeriodSeconds=1
    )
    k8s_cluster.apply(ns, manifest)

    def live_again(p: Any) -> bool:
        cs = p["status"]["containerStatuses"][0]
        return bool(cs["restartCount"] == 1 and cs["ready"])

    pod = pod_when(k8s_cluster, ns, "probed", live_again, timeout=90)
    cs = pod["status"]["containerStatuses"][0]
    assert cs["started"]
    assert cs["lastState"]["terminated"]["exitCode"] in (137, 143)  # killed for liveness
    assert "running" in cs["state"]


def test_killed_container_is_restarted(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    ns = k8s_namespace
    c = {"name": "c", "image": "python:3.11", "command": ["sleep", "3600"]}
    k8s_cluster.apply(ns, manifests.pod("victim", [c]))
    pod_when(k8s_cluster, ns, "victim", lambda p: p["status"]["phase"] == "Running")
    (pid,) = k8s_cluster.pod_pids(ns, "victim")
    os.kill(pid, signal.SIGKILL)

    def restarted(p: Any) -> bool:
        cs = p["status"]["containerStatuses"][0]
        return bool(cs["restartCount"] == 1 and "running" in cs["state"])

    pod = pod_when(k8s_cluster, ns, "victim", restarted)
    last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"], last["signal"]) == (137, "Error", 9)
    assert k8s_cluster.pod_pids(ns, "victim") != [pid]
