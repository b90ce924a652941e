"""Traefik v3 (built by e2e/build-traefik.sh) as the local cluster's ingress controller: a host
process with its Kubernetes Ingress provider (the harness's kubeconfig), serving Ingresses of
class `traefik` on a loopback port. Backends are reached at their Services' ClusterIPs (the
harness proxies those on the host) when the Service asks for it
(`traefik.ingress.kubernetes.io/service.nativelb: "true"`), else at the pod IPs."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from e2e.cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "e2e" / "build-traefik.sh"
INGRESS_CLASS = "traefik"
CONTROLLER = "traefik.io/ingress-controller"


def ensure_binary() -> Path:
    out = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=3600, check=False
    )
    assert out.returncode == 0, f"{SCRIPT} failed:\n{out.stderr[-4000:]}"
    return Path(out.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Traefik:
    url: str
    log: Path


@contextlib.contextmanager
def running(cluster: Cluster, log_dir: Path, timeout_s: float = 120.0) -> Iterator[Traefik]:
    """Traefik against `cluster`, with the IngressClass it serves; both gone afterwards."""
    binary = ensure_binary()
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=(
            "apiVersion: networking.k8s.io/v1\nkind: IngressClass\n"
            f"metadata: {{name: {INGRESS_CLASS}}}\nspec: {{controller: {CONTROLLER}}}\n"
        ),
    )
    web, ping = _free_port(), _free_port()
    env = {k: v for k, v in cluster.env.items() if not k.startswith("KUBERNETES_")}
    log = log_dir / "traefik.log"
    args = [
        str(binary),
        f"--entryPoints.web.address=127.0.0.1:{web}",
        f"--entryPoints.ping.address=127.0.0.1:{ping}",
        "--ping.entryPoint=ping",
        "--providers.kubernetesingress=true",
        f"--providers.kubernetesingress.ingressClass={INGRESS_CLASS}",
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        "--log.level=INFO",
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert proc.poll() is None, f"traefik exited {proc.returncode}:\n{log.read_text()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{ping}/ping", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"traefik not up in {timeout_s}s"
            time.sleep(0.2)  # poll interval of a wait with a deadline
        yield Traefik(url=f"http://127.0.0.1:{web}", log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        cluster.kubectl("delete", "ingressclass", INGRESS_CLASS, "--ignore-not-found", check=False)
