"""Pod networking: one host bridge per cluster and one network namespace + veth pair per pod.

Every address involved (the bridge's, the pods') lies in the slot's private pod network. Service
ClusterIPs that exist are extra /32 addresses on the bridge (the harness's userspace service
proxy listens there); a blackhole route for the rest of the Service network makes sure no packet
to a Service address ever follows the default route out of the machine.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

from e2e.layout import Slot

log = logging.getLogger(__name__)


class HarnessError(RuntimeError):
    """Something the harness needs is missing or broken; the message says what."""


def check_prerequisites() -> None:
    """Fails with a message naming what is missing (the harness never skips silently)."""
    missing = [tool for tool in ("ip", "nsenter", "unshare") if shutil.which(tool) is None]
    if missing:
        raise HarnessError(f"the e2e cluster needs these commands on PATH: {', '.join(missing)}")
    if os.geteuid() != 0:
        raise HarnessError(
            "the e2e cluster needs root (network namespaces, a bridge, private mounts); "
            f"running as uid {os.geteuid()}"
        )


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise HarnessError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def setup_bridge(slot: Slot) -> None:
    prefix = slot.pod_network.prefixlen
    _ip("link", "add", slot.bridge, "type", "bridge")
    _ip("addr", "add", f"{slot.bridge_ip}/{prefix}", "dev", slot.bridge)
    _ip("link", "set", slot.bridge, "up")
    _ip("route", "add", "blackhole", str(slot.service_network))


def add_service_ip(slot: Slot, ip: str) -> None:
    _ip("addr", "add", f"{ip}/32", "dev", slot.bridge)


def del_service_ip(slot: Slot, ip: str) -> None:
    _ip("addr", "del", f"{ip}/32", "dev", slot.bridge, check=False)


def netns_names(slot: Slot) -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(slot.netns_prefix)]


def netns_pids(netns: str) -> list[int]:
    out = _ip("netns", "pids", netns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def add_pod_netns(slot: Slot, netns: str, veth: str, ip: str) -> None:
    """Creates the pod's namespace with `eth0` holding `ip`, joined to the bridge."""
    _ip("netns", "add", netns)
    try:
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", veth, "master", slot.bridge, "up")
        _ip("-n", netns, "addr", "add", f"{ip}/{slot.pod_network.prefixlen}", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        # ClusterIPs live on the host (the harness's service proxy): reach them via the bridge.
        _ip("-n", netns, "route", "add", str(slot.service_network), "via", slot.bridge_ip)
    except HarnessError:
        delete_pod_netns(netns)
        raise


def delete_pod_netns(netns: str) -> None:
    # Deleting the namespace destroys eth0 and with it the host end of the veth pair.
    _ip("netns", "del", netns, check=False)


def teardown(slot: Slot) -> list[str]:
    """Removes every device, namespace and route of the slot; returns what it removed."""
    removed: list[str] = []
    for netns in netns_names(slot):
        delete_pod_netns(netns)
        removed.append(f"netns {netns}")
    links = _ip("-o", "link", "show", check=False).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(slot.veth_prefix) or name == slot.bridge:
            _ip("link", "del", name, check=False)
            removed.append(f"link {name}")
    if _ip("route", "del", "blackhole", str(slot.service_network), check=False).returncode == 0:
        removed.append(f"route blackhole {slot.service_network}")
    return removed


def leftovers(slot: Slot) -> list[str]:
    """What of the slot's network still exists (empty after a clean shutdown)."""
    found = [f"netns {n}" for n in netns_names(slot)]
    links = _ip("-o", "link", "show", check=False).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(slot.veth_prefix) or name == slot.bridge:
            found.append(f"link {name}")
    routes = _ip("route", "show", "type", "blackhole", check=False).stdout
    if str(slot.service_network) in routes:
        found.append(f"route blackhole {slot.service_network}")
    return found
