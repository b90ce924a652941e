"""The examples on the local control plane: every ModelService manifest under examples/ becomes
Ready and answers, and the MLflow registry example rolls to the new version when its alias
moves."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import (
    FakeClock,
    Load,
    Operator,
    cluster_wait,
    deployment_env,
    infer_v2,
    operator_settings,
    running_operator,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

HERE = Path(__file__).parent


def _infer_iris(ip: str, name: str) -> list[str]:
    import urllib.request

    body = {
        "inputs": [
            {
                "name": "x",
                "shape": [2, 4],
                "datatype": "FP64",
                "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3],
            }
        ]
    }
    req = urllib.request.Request(
        f"http://{ip}:8000/v2/models/{name}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        outputs = {o["name"]: o for o in json.loads(resp.read())["outputs"]}
    classes: list[str] = outputs["class"]["data"]
    return classes


def test_examples_become_ready_and_answer_v2(op: Operator) -> None:
    examples = HERE.parents[1] / "examples"
    for name in ("iris", "iris-gpu", "adder"):
        op.kubectl("apply", "-f", str(examples / f"{name}.yaml"))
    op.wait_status("adder", lambda s: s.get("readyReplicas") == 2, "2 ready", 240)
    for ip in op.ready_pod_ips("adder"):
        assert infer_v2(ip, "adder", [1, 2, 3]) == [2, 3, 4]
    for name, replicas in (("iris", 2), ("iris-gpu", 1)):
        op.wait_status(
            name, lambda s, n=replicas: s.get("readyReplicas") == n, f"{replicas} ready", 240
        )
        op.wait_condition(name, "Ready", "True", "AllReplicasReady")
        row = op.kubectl("get", "msvc", name, "--no-headers").stdout.split()
        assert row[1:5] == ["True", "AllReplicasReady", str(replicas), str(replicas)]
        ips = op.ready_pod_ips(name)
        assert len(ips) == replicas
        for ip in ips:
            assert _infer_iris(ip, name) == ["setosa", "virginica"]


def _register_iris(store: Path, *, label_shift: int = 0) -> str:
    """examples.registry in its own process: train, log, register, move @champion."""
    import subprocess
    import sys

    root = HERE.parents[1]
    code = (
        "from examples.registry import register; "
        f"print(register('sqlite:///{store}/mlflow.db', label_shift={label_shift}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=store,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HOME": str(store)},
        capture_output=True,
        text=True,
        timeout=600,  # mlflow's import and a first sqlite migration are slow on a loaded host
        check=True,
    )
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture
def mlflow_store() -> Iterator[Path]:
    """A registry the pods can read: not under /tmp, which is each pod's own emptyDir."""
    import shutil
    import uuid

    store = Path.home() / ".cache" / "shoal-operator-tests" / uuid.uuid4().hex[:8]
    store.mkdir(parents=True)
    yield store
    shutil.rmtree(store, ignore_errors=True)


def test_registry_example_serves_and_rolls_when_the_alias_moves(
    crds: Any, k8s_namespace: str, monkeypatch: pytest.MonkeyPatch, mlflow_store: Path
) -> None:
    """Version 2 is trained with the classes renamed (setosa is 1), so the answer shows which
    version serves: 0 before the alias moves, 1 after, and no request fails in between."""
    assert _register_iris(mlflow_store) == "1"
    monkeypatch.setenv("KUBECONFIG", str(crds.kubeconfig))
    uri = f"sqlite:///{mlflow_store}/mlflow.db"
    settings = operator_settings(k8s_namespace, mlflow_tracking_uri=uri, alias_poll_seconds=30)
    name = "iris-champion"
    row = [5.1, 3.5, 1.4, 0.2]
    clock = FakeClock()
    with running_operator(crds, k8s_namespace, settings) as op:
        op.reconciler.monotonic = clock
        op.kubectl("apply", "-f", str(HERE.parents[1] / "examples" / "registry-alias.yaml"))
        op.wait_condition(name, "Ready", "True", "AllReplicasReady", 240)
        assert (op.get("msvc", name) or {})["status"]["modelVersion"] == "1"
        (ip,) = op.ready_pod_ips(name)
        assert _infer_rows(ip, name, row) == [0]

        with Load(op, name, [], infer=lambda ip, n, _: _infer_rows(ip, n, row)) as load:
            cluster_wait(op, lambda: load.ok >= 10, "answers from version 1")
            assert _register_iris(mlflow_store, label_shift=1) == "2"  # @champion -> 2
            clock.advance(30)  # the alias poll is due
            op.poke(name)
            op.wait_status(name, lambda s: s.get("modelVersion") == "2", "alias moved to 2", 60)
            ready_seen: set[str] = set()

            def rolled() -> bool:
                ready_seen.add((op.condition(name, "Ready") or {}).get("status", "missing"))
                return (1,) in load.answers and deployment_env(op, name)[
                    "SHOAL_MODEL_URI"
                ].endswith("/2")

            cluster_wait(op, rolled, "version 2 answers", 240)
            cluster_wait(op, lambda: len(op.ready_pod_ips(name)) == 1, "the old replica gone", 120)
            seen = load.ok
            cluster_wait(op, lambda: load.ok >= seen + 10, "answers after the rollout")
        assert load.failures == []
        assert ready_seen == {"True"}
        assert {(0,), (1,)} == load.answers
        (ip,) = op.ready_pod_ips(name)
        assert _infer_rows(ip, name, row) == [1]
        op.kubectl("delete", "msvc", name, "--wait=true", "--timeout=90s")


def _infer_rows(ip: str, name: str, row: list[float]) -> list[int]:
    import urllib.request

    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": row}]}
    req = urllib.request.Request(
        f"http://{ip}:8000/v2/models/{name}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        data: list[int] = json.loads(resp.read())["outputs"][0]["data"]
    return data
