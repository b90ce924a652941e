"""The real nodes' configuration files, as pure functions of slot and node (no cluster)."""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from e2e import pki
from e2e.layout import MAX_SLOTS, NODE_NAMES, Slot
from e2e.realnode import config

SLOTS = [Slot(i) for i in range(MAX_SLOTS)]
NODES = [n for s in SLOTS for n in config.real_nodes(s)]


@pytest.mark.parametrize("node", config.real_nodes(Slot(3)), ids=lambda n: n.name)
def test_containerd_config_keeps_everything_under_the_node_folder(node: config.RealNode) -> None:
    doc = tomllib.loads(config.containerd_toml(node, "localhost/pause:1"))
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    # The two settings this machine kind needs (research note): without them no sandbox starts.
    assert cri["restrict_oom_score_adj"] is True
    assert cri["netns_mounts_under_state_dir"] is True
    assert cri["sandbox_image"] == "localhost/pause:1"
    assert cri["stream_server_port"] == "0"  # a random port: nodes never collide
    paths = [doc["root"], doc["state"], doc["grpc"]["address"], doc["ttrpc"]["address"]]
    paths += [cri["cni"]["conf_dir"], doc["plugins"]["io.containerd.internal.v1.opt"]["path"]]
    assert all(Path(p).is_relative_to(node.root) for p in paths), paths
    runc = cri["containerd"]["runtimes"]["runc"]["options"]
    assert runc["SystemdCgroup"] is False
    assert runc["BinaryName"] == config.RUNC
    assert Path(runc["Root"]).is_relative_to(node.root)  # runc's state too, not /run/containerd


def test_sockets_ports_and_pod_ranges_are_unique_across_nodes_and_slots() -> None:
    assert len({n.containerd_socket for n in NODES}) == len(NODES)
    assert len({(n.slot.bridge_ip, n.kubelet_port) for n in NODES}) == len(NODES)
    ranges = [n.pod_range for n in NODES]
    assert not any(a.overlaps(b) for i, a in enumerate(ranges) for b in ranges[i + 1 :])
    # A unix socket path must fit in sun_path (108 bytes), shims append to it.
    assert max(len(str(n.containerd_socket)) for n in NODES) < 90


@pytest.mark.parametrize("slot", SLOTS, ids=lambda s: f"slot{s.index}")
def test_pod_ranges_lie_in_the_slot_network_apart_from_the_process_nodes(slot: Slot) -> None:
    process = [slot.node_pod_cidr(i) for i in range(len(NODE_NAMES))]
    for node in config.real_nodes(slot):
        assert node.pod_range.subnet_of(slot.pod_network)
        assert not any(node.pod_range.overlaps(p) for p in process)


def test_cni_puts_pods_on_the_slot_bridge_without_a_default_route() -> None:
    node = config.real_nodes(Slot(2))[1]
    conf = json.loads(config.cni_conflist(node))
    (bridge,) = conf["plugins"]
    assert bridge["type"] == "bridge"
    assert bridge["bridge"] == node.slot.bridge
    assert bridge["isGateway"] is False
    assert bridge["ipMasq"] is False
    ipam = bridge["ipam"]
    (rng,) = ipam["ranges"][0]
    assert ipaddress.ip_address(rng["rangeStart"]) in node.pod_range
    assert ipaddress.ip_address(rng["rangeEnd"]) in node.pod_range
    assert rng["subnet"] == str(node.slot.pod_network)  # on-link with every pod of the slot
    assert [r["dst"] for r in ipam["routes"]] == [str(node.slot.service_network)]
    assert Path(ipam["dataDir"]).is_relative_to(node.root)


def test_kubelet_config_points_at_the_harness_and_taints_the_node() -> None:
    cpu, gpu = config.real_nodes(Slot(1))
    doc = yaml.safe_load(config.kubelet_yaml(cpu, Path("/ca.crt")))
    assert doc["failCgroupV1"] is False  # cgroup v1 hosts: the kubelet refuses otherwise
    assert doc["clusterDNS"] == [cpu.slot.bridge_ip]
    assert doc["address"] == cpu.slot.bridge_ip
    assert doc["port"] == cpu.kubelet_port
    assert doc["containerRuntimeEndpoint"] == f"unix://{cpu.containerd_socket}"
    assert doc["authentication"]["anonymous"]["enabled"] is False
    assert doc["authentication"]["x509"]["clientCAFile"] == "/ca.crt"
    keys = {t["key"] for t in doc["registerWithTaints"]}
    assert keys == {config.REAL_NODE_TAINT_KEY}
    gpu_doc = yaml.safe_load(config.kubelet_yaml(gpu, Path("/ca.crt")))
    assert {t["key"] for t in gpu_doc["registerWithTaints"]} == {
        config.REAL_NODE_TAINT_KEY,
        config.GPU_RESOURCE,
    }
    assert gpu.labels["nvidia.com/gpu.present"] == "true"
    # What pods add to land there tolerates the real-node taint.
    toleration = config.pod_toleration()
    (taint,) = [t for t in gpu_doc["registerWithTaints"] if t["key"] == toleration["key"]]
    assert taint["effect"] == toleration["effect"]


def test_node_identity_is_a_system_node_certificate(tmp_path: Path) -> None:
    keys = pki.generate(
        tmp_path, "https://10.244.0.1:6443", ["10.244.0.1"], "10.96.0.1", "t", ("real-0",)
    )
    stem = pki.node_client("real-0")[0]
    cert = x509.load_pem_x509_certificate(keys.client_crt(stem).read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:real-0"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "system:nodes"
    )
    kubeconfig = yaml.safe_load(keys.kubeconfig(stem).read_text())
    assert kubeconfig["users"][0]["name"] == stem
