"""Events the kubelet reports about a pod (Started, Killing, Unhealthy, BackOff, Failed), so
`kubectl describe` and test diagnostics show what happened on the node."""

from __future__ import annotations

import asyncio
import datetime
import logging

from e2e.kube import ApiError, Kube, Obj

log = logging.getLogger(__name__)


class EventRecorder:
    def __init__(self, kube: Kube, node: str) -> None:
        self.kube = kube
        self.node = node
        self._tasks: set[asyncio.Task[None]] = set()

    def record(self, pod: Obj, container: str | None, kind: str, reason: str, msg: str) -> None:
        """Posts in the background; an event that cannot be written is only logged."""
        task = asyncio.create_task(self._post(pod, container, kind, reason, msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(
        self, pod: Obj, container: str | None, kind: str, reason: str, msg: str
    ) -> None:
        meta = pod["metadata"]
        now = datetime.datetime.now(datetime.UTC)
        involved: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
        }
        if container:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": involved,
            "type": kind,
            "reason": reason,
            "message": msg[:1024],
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        try:
            await self.kube.create(f"/api/v1/namespaces/{meta['namespace']}/events", event)
        except (ApiError, OSError) as exc:
            log.debug("event %s for %s not written: %s", reason, meta["name"], exc)
