"""What one real node is: its names, folders, ports, addresses and the configuration files of
its containerd, CNI and kubelet, as pure functions of the slot and the node's index.

Every real node of slot N lives under ``<run dir>/real/<name>/`` and puts its pods on the slot's
bridge (one flat L2 with the process kubelet's pods and the host), in a /24 of its own inside the
slot's pod network: ``10.(244+N).(100+k).0/24``. Pods reach the API server, the cluster DNS and
the ClusterIPs (the harness's Service proxy) at the bridge address; they get no default route.

Settings that this machine kind needs (checked by hand, see the research note):
``failCgroupV1: false`` (cgroup v1 hosts), containerd's ``restrict_oom_score_adj = true``
(without it runc cannot write oom_score_adj and every sandbox fails), the runc binary from
Debian, and ``netns_mounts_under_state_dir`` so every pod netns is a file under the run dir.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.layout import Slot

# Pods ask for a real node with this toleration and node selector (see e2e/README.md).
REAL_NODE_TAINT_KEY = "shoal.dev/real-node"
NODE_KIND_LABEL = "shoal.dev/node-kind"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
REAL_GPUS = 2
CNI_BIN_DIR = "/usr/lib/cni"
RUNC = "/usr/sbin/runc"


@dataclass(frozen=True)
class RealNode:
    slot: Slot
    index: int
    name: str
    gpu: bool

    @property
    def root(self) -> Path:
        return self.slot.root / "real" / self.name

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.yaml"

    @property
    def plugin_registry_dir(self) -> Path:
        """Where the kubelet's plugin watcher finds the device plugin's socket."""
        return self.kubelet_dir / "plugins_registry"

    @property
    def kubelet_port(self) -> int:
        return 11250 + 10 * self.slot.index + self.index

    @property
    def pod_range(self) -> ipaddress.IPv4Network:
        net = self.slot.pod_network.network_address
        return ipaddress.IPv4Network(f"{net + 256 * (100 + self.index)}/24")

    @property
    def labels(self) -> dict[str, str]:
        out = {NODE_KIND_LABEL: "real"}
        if self.gpu:
            out |= {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.count": str(REAL_GPUS),
                "nvidia.com/gpu.product": "Shoal-E2E-Fake-GPU",
            }
        return out

    @property
    def taints(self) -> list[dict[str, str]]:
        out = [{"key": REAL_NODE_TAINT_KEY, "value": "true", "effect": "NoSchedule"}]
        return [*out, GPU_TAINT] if self.gpu else out


def real_nodes(slot: Slot) -> list[RealNode]:
    """The real nodes of a slot: one for CPU pods, one with (fake) GPUs."""
    return [RealNode(slot, 0, "real-0", gpu=False), RealNode(slot, 1, "real-gpu-0", gpu=True)]


def pod_toleration() -> dict[str, str]:
    """What a pod adds to run on a real node (with the node selector below)."""
    return {"key": REAL_NODE_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}


def pod_node_selector() -> dict[str, str]:
    return {NODE_KIND_LABEL: "real"}


def containerd_toml(node: RealNode, pause_ref: str) -> str:
    c = node.root / "containerd"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{c / "root"}"
state = "{c / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{node.containerd_socket}"
[ttrpc]
  address = "{node.containerd_socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{c / "opt"}"

[{cri}]
  sandbox_image = "{pause_ref}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{RUNC}"
        Root = "{c / "state" / "runc"}"
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{node.cni_conf_dir}"
"""


def cni_conflist(node: RealNode) -> str:
    slot = node.slot
    hosts = list(node.pod_range.hosts())
    conf: dict[str, Any] = {
        "cniVersion": "0.4.0",
        "name": f"shoal-{slot.index}-{node.name}",
        "plugins": [
            {
                "type": "bridge",
                # The slot's bridge already holds the gateway address; the plugin only plugs
                # veths into it. No masquerade: nothing leaves the machine.
                "bridge": slot.bridge,
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(node.root / "cni" / "ipam"),
                    "ranges": [
                        [
                            {
                                "subnet": str(slot.pod_network),
                                "rangeStart": str(hosts[1]),
                                "rangeEnd": str(hosts[-1]),
                                "gateway": slot.bridge_ip,
                            }
                        ]
                    ],
                    "routes": [{"dst": str(slot.service_network), "gw": slot.bridge_ip}],
                },
            }
        ],
    }
    return json.dumps(conf, indent=2)


def kubelet_yaml(node: RealNode, ca_crt: Path) -> str:
    slot = node.slot
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": slot.bridge_ip,
        "port": node.kubelet_port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "localStorageCapacityIsolation": False,
        "evictionHard": {},
        # Imported images cannot be pulled again: never collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "registerWithTaints": node.taints,
        "resolvConf": str(node.root / "resolv.conf"),
        "clusterDNS": [slot.bridge_ip],
        "clusterDomain": "cluster.local",
        "podLogsDir": str(node.root / "pod-logs"),
        "makeIPTablesUtilChains": False,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_crt)},
        },
        # Only holders of a certificate from the harness CA reach this port (the API server).
        "authorization": {"mode": "AlwaysAllow"},
        "nodeStatusUpdateFrequency": "5s",
        "shutdownGracePeriod": "0s",
    }
    return yaml.safe_dump(config, sort_keys=False)


def kubelet_args(node: RealNode, kubeconfig: Path) -> list[str]:
    labels = ",".join(f"{k}={v}" for k, v in node.labels.items())
    return [
        f"--config={node.kubelet_config}",
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={node.name}",
        f"--node-ip={node.slot.bridge_ip}",
        f"--root-dir={node.kubelet_dir}",
        f"--cert-dir={node.kubelet_dir / 'pki'}",
        f"--node-labels={labels}",
        "--v=1",
    ]
