"""The real nodes of one slot, as the cluster supervisor (e2e.daemon) runs them: start them
beside the process kubelet, wait until the API shows them Ready, stop them at the end."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from e2e.kube import Kube
from e2e.layout import Slot
from e2e.network import HarnessError
from e2e.pki import Pki
from e2e.realnode.config import GPU_RESOURCE, REAL_GPUS, real_nodes
from e2e.realnode.images import NodeImages
from e2e.realnode.node import RunningNode

log = logging.getLogger(__name__)


def node_ready(node: dict[str, Any] | None, gpu: bool) -> bool:
    """Ready=True, no not-ready taint left, and (GPU node) the devices are allocatable."""
    if node is None:
        return False
    conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions") or []}
    taints = node.get("spec", {}).get("taints") or []
    if conds.get("Ready") != "True" or any(
        t["key"].startswith("node.kubernetes.io/") for t in taints
    ):
        return False
    allocatable = node.get("status", {}).get("allocatable") or {}
    return not gpu or allocatable.get(GPU_RESOURCE) == str(REAL_GPUS)


class RealNodes:
    def __init__(self, slot: Slot, keys: Pki, bin_dir: Path, images: NodeImages) -> None:
        self.images = images
        self._reported: set[str] = set()
        self.nodes = [
            RunningNode(n, bin_dir / "kubelet", keys, slot.log_dir) for n in real_nodes(slot)
        ]

    async def start(self, kube: Kube, deadline_s: float) -> dict[str, Any]:
        """Starts every node and waits for it; returns what the cluster's ready info says."""
        started = time.monotonic()
        # Side by side: most of a start is the image import, which waits on the disk.
        await asyncio.gather(*(asyncio.to_thread(n.start, self.images) for n in self.nodes))
        end = time.monotonic() + deadline_s
        pending = [n for n in self.nodes]
        while pending:
            for n in list(pending):
                if node_ready(await kube.get(f"/api/v1/nodes/{n.node.name}"), n.node.gpu):
                    pending.remove(n)
                elif dead := n.check_alive():
                    raise HarnessError(f"real node {n.node.name}: {dead} (see its log)")
            if pending and time.monotonic() > end:
                names = [n.node.name for n in pending]
                raise HarnessError(f"real nodes not Ready after {deadline_s:.0f}s: {names}")
            if pending:
                await asyncio.sleep(0.5)  # poll interval of a wait with a deadline
        elapsed = time.monotonic() - started
        log.info("real nodes ready in %.1fs", elapsed)
        return {
            "nodes": [n.node.name for n in self.nodes if not n.node.gpu],
            "gpu_nodes": [n.node.name for n in self.nodes if n.node.gpu],
            "image": self.images.runtime_ref,
            "start_s": round(elapsed, 1),
        }

    def check_alive(self) -> str | None:
        """Names a component that died since the last call (each is reported once)."""
        for n in self.nodes:
            if (dead := n.check_alive()) and dead not in self._reported:
                self._reported.add(dead)
                return dead
        return None

    def stop(self) -> list[str]:
        removed: list[str] = []
        for n in self.nodes:
            removed += n.stop()
        return removed
