"""Missing prerequisites fail loudly with a message that names them."""

from __future__ import annotations

import pytest

from e2e import network
from e2e.layout import Slot


def test_missing_commands_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(network.HarnessError, match="ip, nsenter, unshare"):
        network.check_prerequisites()


def test_slots_never_share_names_addresses_or_ports() -> None:
    slots = [Slot(i) for i in range(4)]
    for attr in ("bridge", "bridge_ip", "etcd_client_port", "kcm_port", "scheduler_port", "root"):
        values = [getattr(s, attr) for s in slots]
        assert len(set(values)) == len(values), attr
    s0 = Slot(0)
    assert (s0.bridge, s0.bridge_ip, s0.api_url) == (
        "shoal-br0",
        "10.244.0.1",
        "https://10.244.0.1:6443",
    )
    assert all(s0.node_pod_cidr(i).subnet_of(s0.pod_network) for i in range(4))
    assert not s0.service_network.overlaps(s0.pod_network)
