"""The process kubelet: plays every node of the cluster from one asyncio loop.

Per node it registers the Node, renews its Lease, watches the pods bound to it and runs one
PodWorker per pod. Pod IPs come from the node's podCIDR; all devices live in the slot's network.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from e2e.kube import ApiError, Kube, Obj
from e2e.kubelet import node as nodes
from e2e.kubelet.container import Backoff
from e2e.kubelet.events import EventRecorder
from e2e.kubelet.pod import NodeContext, PodWorker
from e2e.layout import NODE_NAMES, Slot, state_root

log = logging.getLogger(__name__)


@dataclass
class IpPool:
    network: ipaddress.IPv4Network
    used: set[str] = field(default_factory=set)

    def take(self) -> str:
        # .1 of each node range stays free: it looks like a gateway address to readers.
        for host in list(self.network.hosts())[1:]:
            ip = str(host)
            if ip not in self.used:
                self.used.add(ip)
                return ip
        raise RuntimeError(f"pod range {self.network} exhausted")

    def release(self, ip: str) -> None:
        self.used.discard(ip)


class NodeAgent:
    def __init__(self, kube: Kube, slot: Slot, index: int, name: str, backoff: Backoff) -> None:
        self.kube = kube
        self.slot = slot
        self.name = name
        self.gpu = name.startswith("gpu")
        self.pool = IpPool(slot.node_pod_cidr(index))
        self.node = nodes.node_object(name, self.gpu, slot.bridge_ip, str(self.pool.network))
        self.ctx = NodeContext(
            kube=kube,
            slot=slot,
            node_name=name,
            host_ip=slot.bridge_ip,
            allocatable=self.node["status"]["allocatable"],
            service_env={
                "KUBERNETES_SERVICE_HOST": slot.bridge_ip,
                "KUBERNETES_SERVICE_PORT": str(slot.api_port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(slot.api_port),
                "KUBERNETES_PORT": f"tcp://{slot.bridge_ip}:{slot.api_port}",
            },
            backoff=backoff,
            mount_record=state_root() / "mount-points.txt",
            mount_uses=slot.root / "mount-uses.txt",
            events=EventRecorder(kube, name),
        )
        self.workers: dict[str, PodWorker] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        await nodes.register(self.kube, self.node)
        lease = asyncio.create_task(nodes.keep_lease(self.kube, self.name, stop))
        watch = asyncio.create_task(self._watch_pods())
        await stop.wait()
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await lease

    async def _watch_pods(self) -> None:
        params = {"fieldSelector": f"spec.nodeName={self.name}"}
        while True:
            try:
                listing = await self.kube.get("/api/v1/pods", params)
                assert listing is not None
                self._reconcile(listing["items"])
                rv = listing["metadata"]["resourceVersion"]
                async for event in self.kube.watch("/api/v1/pods", params, rv):
                    obj = event["object"]
                    if event["type"] == "BOOKMARK":
                        continue
                    if event["type"] == "ERROR":
                        break  # e.g. 410 Gone: list again
                    if event["type"] == "DELETED":
                        self._gone(obj["metadata"]["uid"])
                    else:
                        self._seen(obj)
            except asyncio.CancelledError:
                raise
            except (ApiError, OSError, httpx.HTTPError) as exc:
                log.warning("pod watch of node %s: %s; listing again", self.name, exc)
                await asyncio.sleep(1)
            except Exception:
                log.exception("pod watch of node %s failed; listing again", self.name)
                await asyncio.sleep(1)

    def _reconcile(self, pods: list[Obj]) -> None:
        uids = {p["metadata"]["uid"] for p in pods}
        for uid in list(self.workers):
            if uid not in uids:
                self._gone(uid)
        for p in pods:
            self._seen(p)

    def _seen(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if worker is None:
            worker = PodWorker(self.ctx, pod, self.pool.take())
            self.workers[uid] = worker
            log.info("node %s: starting pod %s at %s", self.name, worker.name, worker.ip)
            worker.start()
            self._background(self._forget_when_finished(worker))
        worker.update(pod)

    def _gone(self, uid: str) -> None:
        """The pod object is gone (finalized by us, or force-deleted): stop it without grace."""
        worker = self.workers.get(uid)
        if worker is not None and not worker.finished.is_set():
            self._background(worker.terminate(0, finalize=False))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forget_when_finished(self, worker: PodWorker) -> None:
        await worker.finished.wait()
        self.workers.pop(worker.uid, None)
        self.pool.release(worker.ip)

    async def shutdown(self, grace_s: float) -> None:
        await asyncio.gather(
            *(w.terminate(grace_s, finalize=False) for w in list(self.workers.values())),
            return_exceptions=True,
        )


class Kubelet:
    def __init__(self, kube: Kube, slot: Slot, backoff: Backoff | None = None) -> None:
        self.slot = slot
        self.agents = [
            NodeAgent(kube, slot, i, name, backoff or Backoff())
            for i, name in enumerate(NODE_NAMES)
        ]
        self.stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(a.run(self.stop)) for a in self.agents]

    def log_path(self, namespace: str, pod: str, container: str) -> Path | None:
        """The log file of a container of a pod running here (for the kubelet server)."""
        for agent in self.agents:
            for worker in agent.workers.values():
                meta = worker.pod["metadata"]
                if (meta["namespace"], meta["name"]) == (namespace, pod):
                    return worker.dir / "logs" / f"{container}.log"
        return None

    async def shutdown(self, grace_s: float = 2.0) -> None:
        self.stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(a.shutdown(grace_s) for a in self.agents))
