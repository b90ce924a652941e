"""Where one cluster lives: its slot number decides every name, address, port and folder.

Several clusters may run side by side (parallel test sessions), each in its own slot. A slot is
owned by whoever holds its lock file; a slot whose lock is free but whose devices or processes
still exist holds the leftovers of a crashed run, which the next owner removes first.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

MAX_SLOTS = 8
NODE_NAMES: tuple[str, ...] = ("cpu-0", "cpu-1", "gpu-0", "gpu-1")
GPUS_PER_GPU_NODE = 2


def state_root() -> Path:
    """The folder under which every slot keeps its run dir and lock (override: SHOAL_E2E_STATE)."""
    return Path(os.environ.get("SHOAL_E2E_STATE", "/tmp/shoal-e2e"))


@dataclass(frozen=True)
class Slot:
    index: int

    @property
    def root(self) -> Path:
        return state_root() / f"slot-{self.index}"

    @property
    def lock_path(self) -> Path:
        return state_root() / f"slot-{self.index}.lock"

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def pods_dir(self) -> Path:
        return self.root / "pods"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def pid_file(self) -> Path:
        return self.root / "cluster.pid"

    @property
    def ready_file(self) -> Path:
        return self.root / "ready.json"

    # Network: slot N owns 10.(244+N).0.0/16 for pods and 10.(96+N).0.0/16 for Service IPs.
    @property
    def bridge(self) -> str:
        return f"shoal-br{self.index}"

    @property
    def netns_prefix(self) -> str:
        return f"shoal{self.index}-"

    @property
    def veth_prefix(self) -> str:
        return f"sh{self.index}v"

    @property
    def pod_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.{244 + self.index}.0.0/16")

    @property
    def bridge_ip(self) -> str:
        return str(self.pod_network.network_address + 1)

    @property
    def service_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.{96 + self.index}.0.0/16")

    def node_pod_cidr(self, node_index: int) -> ipaddress.IPv4Network:
        net = self.pod_network.network_address
        return ipaddress.IPv4Network(f"{net + 256 * (node_index + 1)}/24")

    # Ports: the API server binds the bridge address, so its port can be the same in every slot.
    api_port = 6443

    @property
    def etcd_client_port(self) -> int:
        return 2379 + 10 * self.index

    @property
    def etcd_peer_port(self) -> int:
        return 2380 + 10 * self.index

    @property
    def kcm_port(self) -> int:
        return 10257 + 10 * self.index

    @property
    def scheduler_port(self) -> int:
        return 10259 + 10 * self.index

    @property
    def api_url(self) -> str:
        return f"https://{self.bridge_ip}:{self.api_port}"
