"""The operator as its users run it, against the local control plane: `shoal operator` as a
process under its own namespaced RBAC (proved with `kubectl auth can-i`), with peering and
failover, and standalone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests import merge
from operator_harness import ADDER, Operator, manifest

from shoal.operator import rbac

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

HERE = Path(__file__).parent


def _restricted_kubeconfig(cluster: Any, path: Path, namespace: str) -> Path:
    """A kubeconfig for the operator's own ServiceAccount (rbac.manifests) in `namespace`."""
    token = cluster.kubectl(
        "create", "token", rbac.SERVICE_ACCOUNT, "-n", namespace, "--duration=1h"
    ).stdout.strip()
    cfg = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    for user in cfg["users"]:
        user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _can_i(cluster: Any, sa: str, verb: str, resource: str, *where: str) -> str:
    """`kubectl auth can-i` as `sa`; `resource/sub` asks about the subresource (kubectl would
    read `resource/NAME`)."""
    resource, _, sub = resource.partition("/")
    extra = [f"--subresource={sub}"] if sub else []
    proc = cluster.kubectl(
        "auth", "can-i", verb, resource, *extra, *where, f"--as={sa}", check=False
    )
    return str(proc.stdout.strip())


def test_namespaced_rbac_grants_nothing_outside_its_namespaces(
    crds: Any, k8s_namespace: str
) -> None:
    docs = rbac.manifests(namespace=k8s_namespace, watched=[k8s_namespace])
    assert {d["kind"] for d in docs} == {"ServiceAccount", "Role", "RoleBinding"}
    crds.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    sa = f"system:serviceaccount:{k8s_namespace}:{rbac.SERVICE_ACCOUNT}"
    inside = ["-n", k8s_namespace]
    for verb, resource, allowed in [
        ("patch", "deployments.apps", "yes"),
        ("create", "deployments.apps", "yes"),
        ("patch", "modelservices.serving.shoal.dev/status", "yes"),
        ("update", "modelservices.serving.shoal.dev/finalizers", "yes"),
        ("list", "pods", "yes"),
        ("delete", "deployments.apps", "no"),
        ("get", "secrets", "no"),
        ("update", "modelservices.serving.shoal.dev", "no"),
        ("create", "events.events.k8s.io", "no"),
    ]:
        assert _can_i(crds, sa, verb, resource, *inside) == allowed, (verb, resource)
    for verb, resource in [
        ("patch", "deployments.apps"),
        ("create", "deployments.apps"),
        ("patch", "services"),
        ("patch", "serviceaccounts"),
        ("list", "pods"),
        ("list", "modelservices.serving.shoal.dev"),
    ]:
        assert _can_i(crds, sa, verb, resource, "-n", "kube-system") == "no", (verb, resource)
        assert _can_i(crds, sa, verb, resource, "--all-namespaces") == "no", (verb, resource)
    assert _can_i(crds, sa, "get", "clusterkopfpeerings.kopf.dev") == "no"


def test_cli_without_standalone_or_peering_object_fails_at_start(
    crds: Any, k8s_namespace: str
) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "shoal.operator", "-n", k8s_namespace, "--liveness", ""],
        env={**crds.env}, cwd=HERE.parents[1], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]  # after the start line, one line says why
    assert line.startswith("shoal operator: no KopfPeering")
    assert f"no KopfPeering in namespace {k8s_namespace}" in line
    assert "--standalone" in line


def test_cli_operator_with_its_rbac_and_peering(
    crds: Any, k8s_namespace: str, tmp_path: Path
) -> None:
    """Two replicas under the namespaced Role (the OwnerReferencesPermissionEnforcement
    admission plugin is on, so blockOwnerDeletion needs modelservices/finalizers): one acts;
    when it is killed the other takes over within the peering lifetime."""
    import subprocess
    import sys
    import time
    import urllib.request

    root = HERE.parents[1]
    docs = rbac.manifests(namespace=k8s_namespace, watched=[k8s_namespace])
    crds.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    crds.kubectl(
        "apply", "-n", k8s_namespace, "-f", "-",
        input=yaml.safe_dump(
            {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
             "metadata": {"name": "shoal-operator"}}
        ),
    )  # fmt: skip
    kubeconfig = _restricted_kubeconfig(crds, tmp_path / "operator.kubeconfig", k8s_namespace)
    env = {**crds.env, "KUBECONFIG": str(kubeconfig)}
    ports = [_free_port(), _free_port()]
    procs = []
    logs = []
    try:
        for prio, port in zip((20, 10), ports, strict=True):
            log = (tmp_path / f"operator-{prio}.log").open("w")
            logs.append(tmp_path / f"operator-{prio}.log")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "shoal.operator", "-n", k8s_namespace,
                     "--priority", str(prio), "--liveness", f"http://127.0.0.1:{port}/healthz",
                     "--gpu-device", "auto"],
                    env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip

        def live(port: int) -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        crds.wait_for(lambda: live(ports[0]) and live(ports[1]), 60, "both liveness endpoints")

        def peers() -> int:
            obj = crds.get_json("kopfpeering", "shoal-operator", "-n", k8s_namespace)
            return len(obj.get("status") or {})

        crds.wait_for(lambda: peers() == 2, 60, "both replicas in the KopfPeering")
        cli_op = Operator(crds, k8s_namespace, reconciler=None, runner=None)
        cli_op.apply(manifest("via-cli", merge(ADDER, {"replicas": 1})))
        cli_op.wait_condition("via-cli", "Ready", "True", "AllReplicasReady", 180)
        # Only the higher priority acted; the other one stayed paused.
        assert f"[{k8s_namespace}/via-cli] applied" in logs[0].read_text()
        assert "via-cli" not in logs[1].read_text()
        assert "Forbidden" not in logs[0].read_text()
        cli_op.kubectl("delete", "msvc", "via-cli", "--wait=true", "--timeout=90s")

        # The active replica dies without a goodbye: the other resumes within the lifetime.
        procs[0].kill()
        procs[0].wait(timeout=30)
        killed = time.monotonic()
        crds.wait_for(
            lambda: "Resuming operations after the pause" in logs[1].read_text(),
            90,
            "the remaining replica resumes",
        )
        assert time.monotonic() - killed < 15 + 10  # the peering lifetime, plus slack
        cli_op.apply(manifest("after-failover", merge(ADDER, {"replicas": 1})))
        cli_op.wait_condition("after-failover", "Ready", "True", "AllReplicasReady", 180)
        assert f"[{k8s_namespace}/after-failover] applied" in logs[1].read_text()
        cli_op.kubectl("delete", "msvc", "after-failover", "--wait=true", "--timeout=90s")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_cli_standalone_operator(crds: Any, k8s_namespace: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    log_path = tmp_path / "operator.log"
    env = {**crds.env, "SHOAL_OPERATOR_GPU_DEVICE": "auto"}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shoal.operator", "-n", k8s_namespace, "--standalone",
             "--liveness", "", "--log-format", "json"],
            env=env, cwd=HERE.parents[1], stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        cli_op = Operator(crds, k8s_namespace, reconciler=None, runner=None)
        cli_op.apply(manifest("solo", merge(ADDER, {"replicas": 1})))
        cli_op.wait_condition("solo", "Ready", "True", "AllReplicasReady", 180)
        cli_op.kubectl("delete", "msvc", "solo", "--wait=true", "--timeout=90s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(d.get("object") == f"{k8s_namespace}/solo" for d in lines)
