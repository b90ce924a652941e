"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler as child processes, each with
its log file and a readiness wait with a named deadline."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from e2e.layout import Slot
from e2e.network import HarnessError
from e2e.pki import Pki

log = logging.getLogger(__name__)

# Controllers Shoal relies on, plus what pods and nodes need to behave (node lifecycle removes the
# not-ready taint; root-ca publishes kube-root-ca.crt for service account volumes).
CONTROLLERS = (
    "deployment-controller,replicaset-controller,endpointslice-controller,"
    "endpointslice-mirroring-controller,endpoints-controller,garbage-collector-controller,"
    "disruption-controller,serviceaccount-controller,serviceaccount-token-controller,"
    "namespace-controller,node-lifecycle-controller,root-ca-certificate-publisher-controller,"
    "statefulset-controller,daemonset-controller,job-controller,cronjob-controller,"
    "horizontal-pod-autoscaler-controller,resourcequota-controller,"
    "ttl-after-finished-controller,taint-eviction-controller,pod-garbage-collector-controller,"
    "clusterrole-aggregation-controller,persistentvolume-protection-controller,"
    "persistentvolumeclaim-protection-controller"
)


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphans after a crash


@dataclass
class Component:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    def log_tail(self, n: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_until(
    what: str, deadline_s: float, check: Callable[[], bool], component: Component
) -> None:
    """Polls check until it is true; fails with the component's log tail when its process died
    or the named deadline passed."""
    end = time.monotonic() + deadline_s
    while True:
        with contextlib.suppress(httpx.HTTPError, OSError, ssl.SSLError):
            if check():
                return
        if component.proc is not None and component.proc.poll() is not None:
            raise HarnessError(
                f"{component.name} exited with {component.proc.returncode} while waiting for "
                f"{what}; log tail:\n{component.log_tail()}"
            )
        if time.monotonic() > end:
            raise HarnessError(
                f"timed out after {deadline_s:.0f}s waiting for {what}; "
                f"{component.name} log tail:\n{component.log_tail()}"
            )
        time.sleep(0.3)  # poll interval of a readiness wait with a deadline


@dataclass
class ControlPlane:
    slot: Slot
    bin_dir: Path
    pki: Pki
    components: list[Component] = field(default_factory=list)

    def _component(self, name: str, args: list[str]) -> Component:
        self.slot.log_dir.mkdir(parents=True, exist_ok=True)
        c = Component(name, [str(self.bin_dir / name), *args], self.slot.log_dir / f"{name}.log")
        self.components.append(c)
        return c

    def _admin_client(self) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        ctx.load_cert_chain(str(self.pki.client_crt("admin")), str(self.pki.client_key("admin")))
        return httpx.Client(base_url=self.slot.api_url, verify=ctx, timeout=5.0, trust_env=False)

    def start(self, deadline_scale: float = 1.0) -> None:
        """etcd, then the API server, then controller-manager and scheduler; returns once the
        default ServiceAccount exists (the controllers run and tokens can be issued)."""
        etcd_url = self._start_etcd(deadline_scale)
        self._start_apiserver(etcd_url, deadline_scale)
        kcm = self._start_controllers(deadline_scale)
        with self._admin_client() as c:
            wait_until(
                "ServiceAccount default/default (token and SA controllers running)",
                60 * deadline_scale,
                lambda: (
                    c.get("/api/v1/namespaces/default/serviceaccounts/default").status_code == 200
                ),
                kcm,
            )

    def _start_etcd(self, deadline_scale: float) -> str:
        s = self.slot
        etcd_url = f"http://127.0.0.1:{s.etcd_client_port}"
        peer_url = f"http://127.0.0.1:{s.etcd_peer_port}"
        etcd = self._component(
            "etcd",
            [
                f"--data-dir={s.root / 'etcd'}",
                "--name=shoal-e2e",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=shoal-e2e={peer_url}",
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
        )
        etcd.start()
        with httpx.Client(timeout=2.0, trust_env=False) as c:
            wait_until(
                "etcd /health",
                30 * deadline_scale,
                lambda: '"health":"true"' in c.get(f"{etcd_url}/health").text,
                etcd,
            )
        return etcd_url

    def _start_apiserver(self, etcd_url: str, deadline_scale: float) -> None:
        s, p = self.slot, self.pki
        api = self._component(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                f"--bind-address={s.bridge_ip}",
                f"--advertise-address={s.bridge_ip}",
                f"--secure-port={s.api_port}",
                f"--cert-dir={s.root / 'apiserver-certs'}",
                f"--tls-cert-file={p.apiserver_crt}",
                f"--tls-private-key-file={p.apiserver_key}",
                f"--client-ca-file={p.ca_crt}",
                f"--service-account-key-file={p.sa_pub}",
                f"--service-account-signing-key-file={p.sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={s.service_network}",
                "--authorization-mode=Node,RBAC",
                # Real nodes' kubelets may change only their own Node and their pods' status.
                # OwnerReferencesPermissionEnforcement (on in most managed clusters): setting
                # blockOwnerDeletion needs `update` on the owner's finalizers subresource, which
                # the operator's RBAC must grant.
                "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
                f"--kubelet-client-certificate={p.client_crt('apiserver-kubelet-client')}",
                f"--kubelet-client-key={p.client_key('apiserver-kubelet-client')}",
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        api.start()
        with self._admin_client() as c:
            wait_until(
                "kube-apiserver /readyz",
                90 * deadline_scale,
                lambda: c.get("/readyz").text == "ok",
                api,
            )

    def _start_controllers(self, deadline_scale: float) -> Component:
        """kube-controller-manager and kube-scheduler; returns the controller-manager."""
        s, p = self.slot, self.pki
        common = ["--leader-elect=false", "--bind-address=127.0.0.1", "--profiling=false"]
        kcm_cfg = str(p.kubeconfig("kube-controller-manager"))
        kcm = self._component(
            "kube-controller-manager",
            [
                f"--kubeconfig={kcm_cfg}",
                f"--authentication-kubeconfig={kcm_cfg}",
                f"--authorization-kubeconfig={kcm_cfg}",
                *common,
                f"--secure-port={s.kcm_port}",
                f"--root-ca-file={p.ca_crt}",
                f"--service-account-private-key-file={p.sa_key}",
                "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={p.ca_crt}",
                f"--cluster-signing-key-file={p.ca_key}",
                f"--controllers={CONTROLLERS}",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--concurrent-gc-syncs=5",
                "--v=1",
            ],
        )
        sched_cfg = str(p.kubeconfig("kube-scheduler"))
        sched = self._component(
            "kube-scheduler",
            [
                f"--kubeconfig={sched_cfg}",
                f"--authentication-kubeconfig={sched_cfg}",
                f"--authorization-kubeconfig={sched_cfg}",
                *common,
                f"--secure-port={s.scheduler_port}",
                "--v=1",
            ],
        )
        kcm.start()
        sched.start()
        with httpx.Client(verify=False, timeout=2.0, trust_env=False) as c:
            for comp, port in ((kcm, s.kcm_port), (sched, s.scheduler_port)):
                url = f"https://127.0.0.1:{port}/healthz"
                wait_until(
                    f"{comp.name} /healthz",
                    60 * deadline_scale,
                    lambda url=url: c.get(url).text == "ok",  # type: ignore[misc]
                    comp,
                )
        return kcm

    def check_alive(self) -> str | None:
        """Names a component whose process has exited, if any."""
        for c in self.components:
            if c.proc is not None and c.proc.poll() is not None:
                return f"{c.name} exited with {c.proc.returncode}"
        return None

    def stop(self) -> None:
        for c in reversed(self.components):
            c.stop()


_OURS = (
    b"etcd",
    b"kube-apiserver",
    b"kube-controller-manager",
    b"kube-scheduler",
    # real nodes (their containers are found by network namespace: e2e/realnode/cleanup.py)
    b"kubelet",
    b"containerd",
    b"containerd-shim-runc-v2",
)


def processes_under(path: Path) -> list[int]:
    """Pids of the components (and not yet exec'd container launchers) of the slot whose run dir
    is path: recognised by program name and the run dir in their arguments."""
    me = os.getpid()
    needle = str(path).encode()
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        argv = cmdline.split(b"\0")
        ours = argv[0].rsplit(b"/", 1)[-1] in _OURS or any(
            a.endswith(b"launcher.py") or a == b"e2e.realnode.deviceplugin" for a in argv
        )
        if needle in cmdline and ours:
            found.append(int(entry))
    return found


def kill_processes_under(path: Path) -> list[int]:
    """SIGKILLs the processes of a (crashed) run of the slot whose run dir is path."""
    return kill_all(processes_under(path))


def kill_all(pids: list[int]) -> list[int]:
    """SIGKILLs each pid; returns those that still existed."""
    killed: list[int] = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed
