"""Starts and stops one real node: its containerd (with the images imported), the kubelet with
its own node identity, and on a GPU node the fake-GPU device plugin."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from e2e.controlplane import Component, wait_until
from e2e.network import HarnessError
from e2e.pki import Pki, node_client
from e2e.realnode import cleanup
from e2e.realnode.config import (
    REAL_GPUS,
    RealNode,
    cni_conflist,
    containerd_toml,
    kubelet_args,
    kubelet_yaml,
)
from e2e.realnode.images import DEFAULT_REF, NodeImages

log = logging.getLogger(__name__)

TMPFS_SIZE = "4g"  # an upper bound; the memory used is what the node holds (images, layers)


@dataclass
class RunningNode:
    node: RealNode
    kubelet_bin: Path
    pki: Pki
    log_dir: Path
    components: list[Component] = field(default_factory=list)

    def _component(self, name: str, argv: list[str]) -> Component:
        c = Component(
            f"{self.node.name}/{name}", argv, self.log_dir / f"{self.node.name}-{name}.log"
        )
        self.components.append(c)
        c.start()
        return c

    def ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = ["ctr", "--address", str(self.node.containerd_socket), "-n", "k8s.io", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise HarnessError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-2000:]}")
        return proc

    def start(self, images: NodeImages, deadline_scale: float = 1.0) -> None:
        """Writes the configs, starts containerd, imports the images, starts the kubelet (and
        the device plugin); returns once the kubelet runs (the Node's readiness is awaited
        through the API by the caller)."""
        n = self.node
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for d in (n.cni_conf_dir, n.kubelet_dir, n.root / "pod-logs"):
            d.mkdir(parents=True, exist_ok=True)
        self._mount_tmpfs(n.root / "containerd")
        n.containerd_config.write_text(containerd_toml(n, images.pause_ref))
        (n.cni_conf_dir / "10-shoal.conflist").write_text(cni_conflist(n))
        n.kubelet_config.write_text(kubelet_yaml(n, self.pki.ca_crt))
        (n.root / "resolv.conf").write_text("")  # pods get the cluster DNS and nothing else
        containerd = self._component(
            "containerd", ["containerd", f"--config={n.containerd_config}"]
        )
        wait_until(
            "containerd socket",
            30 * deadline_scale,
            lambda: self._ctr_ok(),
            containerd,
        )
        self._import(images)
        stem = node_client(n.name)[0]
        self._component(
            "kubelet", [str(self.kubelet_bin), *kubelet_args(n, self.pki.kubeconfig(stem))]
        )
        if n.gpu:
            self._component(
                "device-plugin",
                [
                    sys.executable,
                    "-m",
                    "e2e.realnode.deviceplugin",
                    f"--registry-dir={n.plugin_registry_dir}",
                    f"--node={n.name}",
                    f"--count={REAL_GPUS}",
                ],
            )

    @staticmethod
    def _mount_tmpfs(path: Path) -> None:
        """containerd's root and state in memory: importing the images (~14k files) and deleting
        them at `down` took ~20 s and ~50 s per node on this machine's shared disk; a tmpfs
        makes both near instant, for the image's size in memory while the node runs."""
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0711", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise HarnessError(f"mounting a tmpfs on {path} failed: {proc.stderr.strip()}")

    def _ctr_ok(self) -> bool:
        if not self.node.containerd_socket.exists():
            return False
        with contextlib.suppress(HarnessError, subprocess.TimeoutExpired):
            self.ctr("version", timeout=5)
            return True
        return False

    def _import(self, images: NodeImages) -> None:
        started = time.monotonic()
        for archive in (images.pause_archive, images.runtime_archive):
            self.ctr("images", "import", "--no-unpack=false", str(archive))
        names = set(self.ctr("images", "ls", "-q").stdout.split())
        for ref in (images.pause_ref, images.runtime_ref):
            if ref not in names:
                raise HarnessError(f"{self.node.name}: {ref} not in containerd after import")
        if DEFAULT_REF not in names:
            self.ctr("images", "tag", images.runtime_ref, DEFAULT_REF)
        log.info("%s: images imported in %.1fs", self.node.name, time.monotonic() - started)

    def check_alive(self) -> str | None:
        for c in self.components:
            if c.proc is not None and c.proc.poll() is not None:
                return f"{c.name} exited with {c.proc.returncode}"
        return None

    def stop(self) -> list[str]:
        """Stops the kubelet, kills the containers, stops containerd, then removes whatever is
        left under the node's folder (processes in its netns, mounts)."""
        for c in reversed(self.components):
            if c.name.endswith("/kubelet") or c.name.endswith("/device-plugin"):
                c.stop(timeout_s=10)
        with contextlib.suppress(HarnessError, subprocess.TimeoutExpired):
            for task in self.ctr("tasks", "ls", "-q", timeout=10).stdout.split():
                with contextlib.suppress(HarnessError):
                    self.ctr("tasks", "kill", "-s", "SIGKILL", task, timeout=10)
        for c in self.components:
            if c.name.endswith("/containerd"):
                c.stop(timeout_s=10)
        return cleanup.remove(self.node.root)
