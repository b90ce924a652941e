"""Pods run as local processes with their own IPs; the real controllers publish them."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from e2e.cluster import Cluster
from e2e.tests import manifests

pytestmark = pytest.mark.e2e


def ready_endpoint_ips(cluster: Cluster, ns: str, service: str) -> set[str]:
    slices = cluster.get_json(
        "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={service}"
    )["items"]
    return {
        addr
        for s in slices
        for ep in s.get("endpoints") or []
        if ep.get("conditions", {}).get("ready")
        for addr in ep["addresses"]
    }


def wait_ready_ips(cluster: Cluster, ns: str, service: str, n: int) -> set[str]:
    def exactly_n() -> set[str] | None:
        ips = ready_endpoint_ips(cluster, ns, service)
        return ips if len(ips) == n else None

    return cluster.wait_for(exactly_n, 90, f"{n} ready endpoints of service {service}")


def pod_when(
    cluster: Cluster, ns: str, name: str, cond: Callable[[Any], bool], timeout: float = 60
) -> Any:
    """Waits until cond(pod) holds (KeyErrors count as not yet); returns the pod."""

    def check() -> Any:
        pod = cluster.get_json("pod", "-n", ns, name)
        return pod if cond(pod) else None

    return cluster.wait_for(check, timeout, f"pod {ns}/{name} to reach the expected state")


def get(ip: str, path: str = "/") -> Any:
    resp = httpx.get(f"http://{ip}:8080{path}", timeout=5, trust_env=False)
    resp.raise_for_status()
    return resp.json()


def test_deployment_three_replicas_answer_at_their_endpoint_ips(
    k8s_cluster: Cluster, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    k8s_cluster.apply(ns, manifests.service("web"))
    k8s_cluster.apply(
        ns,
        manifests.deployment("web", 3, manifests.server_container()),
    )
    ips = wait_ready_ips(k8s_cluster, ns, "web", 3)
    pods = k8s_cluster.get_json("pods", "-n", ns, "-l", "app=web")["items"]
    assert {p["status"]["podIP"] for p in pods} == ips
    answers = {ip: get(ip) for ip in ips}
    assert {a["ip"] for a in answers.values()} == ips  # each answered from its own IP
    assert {a["pod"] for a in answers.values()} == {p["metadata"]["name"] for p in pods}
    for p in pods:
        assert p["status"]["phase"] == "Running"
        assert p["status"]["hostIP"] == k8s_cluster.host_ip
        assert p["spec"]["nodeName"].startswith("cpu-")  # GPU nodes are tainted


def test_env_volumes_and_in_cluster_api_access(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    ns = k8s_namespace
    k8s_cluster.kubectl("create", "configmap", "cfg", "-n", ns, "--from-literal=greeting=hello")
    k8s_cluster.kubectl("create", "secret", "generic", "sec", "-n", ns, "--from-literal=k=s3cret")
    container = manifests.server_container(
        env=[
            *manifests.downward_env(),
            {
                "name": "GREETING",
                "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}},
            },
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "k"}}},
        ],
        volumeMounts=[
            {"name": "cfg", "mountPath": "/etc/shoal-e2e-cfg"},
            # Over /tmp, where the run dir (the other volumes' sources) lives: must still work.
            {"name": "scratch", "mountPath": "/tmp"},
        ],
    )
    volumes = [
        {"name": "cfg", "configMap": {"name": "cfg"}},
        {"name": "scratch", "emptyDir": {}},
    ]
    k8s_cluster.apply(ns, manifests.pod("envpod", [container], volumes=volumes))
    k8s_cluster.kubectl("wait", "-n", ns, "pod/envpod", "--for=condition=Ready", "--timeout=60s")
    pod = k8s_cluster.get_json("pod", "-n", ns, "envpod")
    info = get(pod["status"]["podIP"])
    assert info["greeting"] == "hello"
    assert info["secret"] == "s3cret"
    assert info["namespace_file"] == ns
    assert info["token_len"] > 100
    assert info["hostname"] == "envpod"
    # In-cluster config works: the pod reaches the API server with its token and CA.
    script = (
        "import os, ssl, urllib.request; d = '/var/run/secrets/kubernetes.io/serviceaccount'; "
        "ctx = ssl.create_default_context(cafile=d + '/ca.crt'); "
        "h, p = os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT']; "
        "req = urllib.request.Request(f'https://{h}:{p}/version', "
        "headers={'Authorization': 'Bearer ' + open(d + '/token').read()}); "
        "open('/dev/termination-log', 'w').write(urllib.request.urlopen(req, context=ctx).read()"
        ".decode()); "
        "print(open('/etc/shoal-e2e-cfg/greeting').read())"
    )
    job_pod = {
        "name": "client",
        "image": "python:3.11",
        "command": ["python", "-c", script],
        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/shoal-e2e-cfg"}],
    }
    k8s_cluster.apply(
        ns,
        manifests.pod("client", [job_pod], restartPolicy="Never", volumes=volumes[:1]),
    )
    done = pod_when(
        k8s_cluster, ns, "client", lambda p: p["status"].get("phase") in ("Succeeded", "Failed")
    )
    term = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert done["status"]["phase"] == "Succeeded", term
    assert json.loads(term["message"])["gitVersion"] == "v1.36.3"
    assert k8s_cluster.pod_log(ns, "client").strip() == "hello"
    assert k8s_cluster.kubectl("logs", "-n", ns, "client").stdout.strip() == "hello"


def test_readiness_failure_removes_the_endpoint(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    ns = k8s_namespace
    k8s_cluster.apply(ns, manifests.service("rd"))
    k8s_cluster.apply(
        ns,
        manifests.deployment("rd", 2, manifests.server_container()),
    )
    ips = wait_ready_ips(k8s_cluster, ns, "rd", 2)
    victim, other = sorted(ips)
    httpx.post(f"http://{victim}:8080/unready", timeout=5, trust_env=False).raise_for_status()
    k8s_cluster.wait_for(
        lambda: ready_endpoint_ips(k8s_cluster, ns, "rd") == {other},
        30,
        f"endpoint {victim} to leave the ready set",
    )
    pods = k8s_cluster.get_json("pods", "-n", ns, "-l", "app=rd")["items"]
    by_ip = {p["status"]["podIP"]: p for p in pods}
    ready = [c for c in by_ip[victim]["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "False"
    assert get(victim)["ip"] == victim  # still running: only unready


def test_unmapped_image_waits_with_a_clear_reason(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    ns = k8s_namespace
    c = {"name": "c", "image": "nginx:1.27", "command": ["nginx"]}
    k8s_cluster.apply(ns, manifests.pod("nginx", [c]))
    pod = pod_when(
        k8s_cluster,
        ns,
        "nginx",
        lambda p: (
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImageNeverPull"
        ),
    )
    message = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    assert "nginx:1.27 is not mapped to a local installation" in message
    assert pod["status"]["phase"] == "Pending"


CLIENT = r"""
import json, socket, ssl, urllib.request
d = "/var/run/secrets/kubernetes.io/serviceaccount"
ctx = ssl.create_default_context(cafile=d + "/ca.crt")
req = urllib.request.Request(
    "https://kubernetes.default.svc/version",
    headers={"Authorization": "Bearer " + open(d + "/token").read()},
)
api = json.load(urllib.request.urlopen(req, context=ctx, timeout=5))["gitVersion"]
seen = set()
for url in ["http://web/", "http://web.{ns}.svc.cluster.local/"] * 5:
    seen.add(json.load(urllib.request.urlopen(url, timeout=5))["pod"])
try:
    socket.getaddrinfo("example.com", 80)
    outside = "resolved"
except socket.gaierror:
    outside = "nxdomain"
result = {"seen": sorted(seen), "outside": outside, "api": api}
open("/dev/termination-log", "w").write(json.dumps(result))
"""


def test_service_cluster_ip_and_dns(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    ns = k8s_namespace
    k8s_cluster.apply(ns, manifests.service("web"))
    k8s_cluster.apply(
        ns,
        manifests.deployment("web", 2, manifests.server_container()),
    )
    wait_ready_ips(k8s_cluster, ns, "web", 2)
    cluster_ip = k8s_cluster.get_json("service", "-n", ns, "web")["spec"]["clusterIP"]
    # From the host, the ClusterIP answers through the harness's service proxy.
    resp = httpx.get(f"http://{cluster_ip}/", timeout=5, trust_env=False)
    assert resp.json()["pod"].startswith("web-")
    client = {
        "name": "client",
        "image": "python:3.11",
        "command": ["python", "-c", CLIENT.replace("{ns}", ns)],
    }
    k8s_cluster.apply(ns, manifests.pod("client", [client], restartPolicy="Never"))
    done = pod_when(
        k8s_cluster, ns, "client", lambda p: p["status"].get("phase") in ("Succeeded", "Failed")
    )
    term = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert done["status"]["phase"] == "Succeeded", (term, k8s_cluster.pod_log(ns, "client"))
    result = json.loads(term["message"])
    pods = {
        p["metadata"]["name"]
        for p in k8s_cluster.get_json("pods", "-n", ns, "-l", "app=web")["items"]
    }
    assert result["seen"]
    assert set(result["seen"]) <= pods
    assert result["outside"] == "nxdomain"  # cluster DNS never forwards outside
    assert result["api"] == "v1.36.3"  # the API server via kubernetes.default.svc


def test_init_container_runs_first_and_shares_volumes(
    k8s_cluster: Cluster, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    mount = [{"name": "work", "mountPath": "/work-dir"}]
    init = {
        "name": "prepare",
        "image": "python:3.11",
        "command": ["sh", "-c", "echo prepared > /work-dir/state"],
        "volumeMounts": mount,
    }
    main = {
        "name": "main",
        "image": "python:3.11",
        "command": ["sh", "-c", "cat /work-dir/state > /dev/termination-log"],
        "volumeMounts": mount,
    }
    manifest = manifests.pod(
        "init",
        [main],
        initContainers=[init],
        restartPolicy="Never",
        volumes=[{"name": "work", "emptyDir": {}}],
    )
    k8s_cluster.apply(ns, manifest)
    pod = pod_when(k8s_cluster, ns, "init", lambda p: p["status"].get("phase") == "Succeeded")
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["message"].strip() == "prepared"


def test_shoal_image_runs_the_local_installation(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    """The contract with the operator: */shoal images run `shoal` from the local venv (its
    entrypoint when only args are given), and the repo root is importable."""
    ns = k8s_namespace
    cli = {"name": "cli", "image": "ghcr.io/shoal-dev/shoal:0.1.0", "args": ["--help"]}
    imp = {
        "name": "imp",
        "image": "ghcr.io/shoal-dev/shoal:dev",
        "command": ["python", "-c", "import examples, shoal, sys; print(sys.prefix)"],
    }
    k8s_cluster.apply(ns, manifests.pod("cli", [cli, imp], restartPolicy="Never"))
    pod = pod_when(k8s_cluster, ns, "cli", lambda p: p["status"].get("phase") == "Succeeded")
    assert all(
        c["state"]["terminated"]["exitCode"] == 0 for c in pod["status"]["containerStatuses"]
    )
    assert "usage: shoal" in k8s_cluster.pod_log(ns, "cli", "cli")
    assert k8s_cluster.pod_log(ns, "cli", "imp").strip() == sys.prefix


def test_missing_config_map_waits_then_starts(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    ns = k8s_namespace
    env = [{"name": "V", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "v"}}}]
    c = {"name": "c", "image": "python:3.11", "command": ["sleep", "3600"], "env": env}
    k8s_cluster.apply(
        ns,
        manifests.pod("late", [c], terminationGracePeriodSeconds=1),
    )
    pod_when(
        k8s_cluster,
        ns,
        "late",
        lambda p: (
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
            == "CreateContainerConfigError"
        ),
    )
    k8s_cluster.kubectl("create", "configmap", "late", "-n", ns, "--from-literal=v=1")
    pod_when(k8s_cluster, ns, "late", lambda p: p["status"]["phase"] == "Running")
