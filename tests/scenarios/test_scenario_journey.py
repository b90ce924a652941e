"""Scenario: the user journey of the README and NOTES.txt, on the local control plane.

`helm install` (operator and gateway as pods from the chart, values-local.yaml) -> the iris and
GPU examples applied with kubectl -> Ready -> answers over V1 and V2 through a real ingress
controller (Traefik, a host process on the cluster's API) with the generated token, 401 without
-> a ModelService at 0 replicas (autoscaling, minReplicas 0) answers a request through the
ingress: the gateway holds it, the operator's autoscaler finds it through the chart's headless
gateway metrics Service and scales from zero -> `helm upgrade` with new tokens takes effect ->
SIGKILL of the leading operator pod: the other takes over (once the dead leader's peering
entry expires: up to kopf's 60 s lifetime) and reconciles a change -> `kubectl delete msvc`
removes what the operator made -> `helm uninstall` leaves only the CRDs. The time from
`helm install` to both models Ready is written to the cluster's log folder
(journey-timings.json) and printed.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from e2e.cluster import Cluster
from tests.install import chart, traefik

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
RELEASE = "shoal"
MODELS = {"iris": ROOT / "examples" / "iris.yaml", "iris-gpu": ROOT / "examples" / "iris-gpu.yaml"}
SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [7.7, 3.0, 6.1, 2.3]
ZERO_NAME = "iris-zero"
ZERO = {
    "apiVersion": "serving.shoal.dev/v1alpha1",
    "kind": "ModelService",
    "metadata": {"name": ZERO_NAME},
    "spec": {
        "model": {"class": "examples.iris:LogisticIris"},
        "replicas": 0,
        "autoscaling": {"minReplicas": 0, "maxReplicas": 1, "targetQueueDepth": 4},
        "resources": {"cpu": "250m", "memory": "512Mi"},
        "health": {"startupTimeoutSeconds": 120},
    },
}


@pytest.fixture
def ingress(k8s_cluster: Cluster) -> Iterator[traefik.Traefik]:
    with traefik.running(k8s_cluster, k8s_cluster.log_dir) as t:
        yield t


def _helm(cluster: Cluster, *args: str) -> str:
    return chart.helm(*args, env=cluster.env)


def _msvc_ready(cluster: Cluster, ns: str) -> bool:
    items = cluster.get_json("msvc", "-n", ns)["items"]
    ready = {
        i["metadata"]["name"]
        for i in items
        for c in i.get("status", {}).get("conditions", [])
        if c["type"] == "Ready" and c["status"] == "True"
    }
    return ready == set(MODELS)


def _predict(url: str, model: str, token: str | None, rows: list[list[float]]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"instances": rows}
    return httpx.post(f"{url}/v1/models/{model}:predict", json=body, headers=headers, timeout=30)


def _infer(url: str, model: str, token: str) -> httpx.Response:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": VIRGINICA}]}
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.post(f"{url}/v2/models/{model}/infer", json=body, headers=headers, timeout=30)


def _held_predict(url: str, token: str) -> httpx.Response | None:
    """A request to the model at zero replicas: the gateway holds it until a replica is ready
    (its deadline covers a replica's start on a loaded machine)."""
    headers = {"Authorization": f"Bearer {token}", "x-shoal-timeout-ms": "80000"}
    body = {"instances": [SETOSA]}
    r = httpx.post(f"{url}/v1/models/{ZERO_NAME}:predict", json=body, headers=headers, timeout=85)
    return None if r.status_code == 404 else r  # 404: the gateway has not seen the model yet


def _tokens(cluster: Cluster, ns: str) -> dict[str, Any]:
    secret = cluster.get_json("secret", "-n", ns, f"{RELEASE}-gateway-tokens")
    tokens: dict[str, Any] = yaml.safe_load(base64.b64decode(secret["data"]["tokens"]))["tokens"]
    return tokens


def _operator_pods(cluster: Cluster, ns: str) -> list[str]:
    pods = cluster.get_json("pods", "-n", ns, "-l", "app.kubernetes.io/name=shoal-operator")
    return [p["metadata"]["name"] for p in pods["items"]]


def _leader(cluster: Cluster, ns: str) -> str | None:
    """The pod whose peer entry has the highest priority (kopf: the one that acts)."""
    peering = cluster.get_json("clusterkopfpeering", f"{RELEASE}-operator-{ns}")
    peers = peering.get("status") or {}
    pods = set(_operator_pods(cluster, ns))
    # Peer ids are user@hostname/...; the hostname is the pod's name.
    live = [(p["priority"], pid.split("@", 1)[1].split("/", 1)[0]) for pid, p in peers.items()]
    live = [(prio, host) for prio, host in live if host in pods]
    return max(live)[1] if len(live) == len(pods) == 2 else None


def test_journey_from_helm_install_to_uninstall(
    k8s_cluster: Cluster, k8s_namespace: str, ingress: traefik.Traefik
) -> None:
    c, ns, timings = k8s_cluster, k8s_namespace, {}
    c.kubectl("apply", "--server-side", "-f", str(chart.CHART / "crds"))
    values = str(chart.CHART / "values-local.yaml")

    # -- install, apply the examples, wait for Ready ---------------------------------------
    t0 = time.monotonic()
    notes = _helm(c, "install", RELEASE, str(chart.CHART), "-n", ns, "-f", values)
    assert f"kubectl -n {ns} apply -f examples/iris.yaml" in notes
    for manifest in MODELS.values():
        c.kubectl("apply", "-n", ns, "-f", str(manifest))
    c.wait_for(lambda: _msvc_ready(c, ns), 300, "both ModelServices Ready")
    (wait_line,) = [
        line.strip() for line in notes.splitlines() if "--for=condition=Available" in line
    ]
    c.kubectl(*wait_line.split()[1:], timeout=300)  # NOTES.txt's step 1
    timings["helm_install_to_ready_s"] = round(time.monotonic() - t0, 1)

    # -- through the ingress: V1 and V2 with the token, 401 without --------------------------
    ((token, scope),) = _tokens(c, ns).items()
    assert scope == "*"
    # NOTES.txt's own command finds that token.
    (token_line,) = [line.strip() for line in notes.splitlines() if "TOKEN=$(" in line]
    found = subprocess.run(
        ["bash", "-c", f"{token_line} && echo $TOKEN"],
        capture_output=True, text=True, env=c.env, timeout=60, check=True,
    )  # fmt: skip
    assert found.stdout.strip() == token
    t1 = time.monotonic()
    c.wait_for(
        lambda: _predict(ingress.url, "iris", token, [SETOSA]).status_code == 200,
        60,
        "iris answering through traefik",
    )
    timings["ready_to_first_answer_through_ingress_s"] = round(time.monotonic() - t1, 1)
    for model in MODELS:
        r = _predict(ingress.url, model, token, [SETOSA, VIRGINICA])
        assert r.status_code == 200, r.text
        assert [p["class"] for p in r.json()["predictions"]] == ["setosa", "virginica"]
        r = _infer(ingress.url, model, token)
        assert r.status_code == 200, r.text
        assert r.json()["model_name"] == model
        assert _predict(ingress.url, model, None, [SETOSA]).status_code == 401
        assert _predict(ingress.url, model, "not-" + token, [SETOSA]).status_code == 401

    # -- scale from zero: the autoscaler (in the operator pod) finds every gateway pod through
    # the chart's headless metrics Service (dns+http://) and sees the held request ----------
    t_zero = time.monotonic()
    c.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(ZERO))
    c.wait_for(
        lambda: c.get_json("deploy", ZERO_NAME, "-n", ns)["spec"]["replicas"] == 0,
        60,
        f"{ZERO_NAME} made at 0 replicas",
    )
    held = c.wait_for(
        lambda: _held_predict(ingress.url, token),
        90,
        f"a request to {ZERO_NAME} held and answered",
    )
    assert held.status_code == 200, held.text
    assert [p["class"] for p in held.json()["predictions"]] == ["setosa"]
    assert c.get_json("deploy", ZERO_NAME, "-n", ns)["spec"]["replicas"] == 1
    events = c.get_json("events", "-n", ns, "--field-selector", "reason=Autoscaled")["items"]
    assert any(
        e["involvedObject"]["name"] == ZERO_NAME and "from zero" in e["message"] for e in events
    ), [e["message"] for e in events]
    timings["scale_from_zero_through_ingress_s"] = round(time.monotonic() - t_zero, 1)

    # -- helm upgrade with new tokens: the new one is taken, the old one refused ------------
    t2 = time.monotonic()
    new_token = "journey-upgraded-token"
    tokens = json.dumps({new_token: ["iris"]})
    _helm(c, "upgrade", RELEASE, str(chart.CHART), "-n", ns, "-f", values,
          "--set-json", f"gateway.auth.tokens={tokens}")  # fmt: skip
    c.wait_for(
        lambda: (
            _predict(ingress.url, "iris", token, [SETOSA]).status_code == 401
            and _predict(ingress.url, "iris", new_token, [SETOSA]).status_code == 200
        ),
        60,
        "the upgraded tokens in force",
    )
    assert _predict(ingress.url, "iris-gpu", new_token, [SETOSA]).status_code == 403
    timings["helm_upgrade_to_effect_s"] = round(time.monotonic() - t2, 1)

    # -- SIGKILL the leading operator: the other takes over --------------------------------
    leader = c.wait_for(lambda: _leader(c, ns), 60, "two operator peers, one leading")
    (survivor,) = [p for p in _operator_pods(c, ns) if p != leader]
    t3 = time.monotonic()
    for pid in c.pod_pids(ns, leader):
        os.kill(pid, signal.SIGKILL)
    c.wait_for(
        lambda: "Resuming operations after the pause" in c.pod_log(ns, survivor),
        120,
        f"{survivor} resuming after {leader} was killed",
    )
    c.kubectl("patch", "msvc", "iris", "-n", ns, "--type=merge", "-p", '{"spec":{"replicas":1}}')
    c.wait_for(
        lambda: c.get_json("deploy", "iris", "-n", ns)["spec"]["replicas"] == 1,
        60,
        "the survivor reconciling iris to 1 replica",
    )
    timings["operator_kill_to_takeover_s"] = round(time.monotonic() - t3, 1)

    # -- kubectl delete msvc removes what the operator made --------------------------------
    made = "app.kubernetes.io/name=shoal-model"
    c.kubectl("delete", "msvc", "--all", "-n", ns, "--wait=true", timeout=120)
    c.wait_for(
        lambda: not c.get_json("deploy,svc,pdb,pods", "-n", ns, "-l", made)["items"],
        120,
        "the models' Deployments, Services, PDBs and pods gone",
    )

    # -- helm uninstall leaves only the CRDs -------------------------------------------------
    _helm(c, "uninstall", RELEASE, "-n", ns, "--wait")
    instance = f"app.kubernetes.io/instance={RELEASE}"
    kinds = "deploy,svc,pdb,sa,secret,role,rolebinding,ingress,pods"
    c.wait_for(
        lambda: not c.get_json(kinds, "-n", ns, "-l", instance)["items"],
        120,
        "the release's namespaced objects gone",
    )
    cluster_objs = c.get_json("clusterrole,clusterrolebinding,clusterkopfpeering", "-l", instance)
    assert [o["metadata"]["name"] for o in cluster_objs["items"]] == []
    crds = c.get_json("crd")["items"]
    assert {"modelservices.serving.shoal.dev", "clusterkopfpeerings.kopf.dev"} <= {
        d["metadata"]["name"] for d in crds
    }

    timings["journey_total_s"] = round(time.monotonic() - t0, 1)
    (c.log_dir / "journey-timings.json").write_text(json.dumps(timings, indent=2))
    print("journey timings:", json.dumps(timings))
