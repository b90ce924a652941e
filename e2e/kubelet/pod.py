"""One pod on one node: sandbox (network namespace + IP), volumes, init and app containers, status
reports, and graceful deletion ending with the final DELETE (gracePeriodSeconds=0)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e import network
from e2e.kube import ApiError, Kube, Obj
from e2e.kubelet.container import Backoff, ContainerRunner, Launch, now_rfc3339
from e2e.kubelet.events import EventRecorder
from e2e.kubelet.podspec import (
    REPO_ROOT,
    ConfigError,
    PodFacts,
    Resolver,
    container_argv,
    container_env,
    mapped_entrypoint,
    unmapped_message,
)
from e2e.kubelet.services import resolv_conf
from e2e.kubelet.volumes import ensure_mount_points, materialize, mounts_for
from e2e.layout import Slot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeContext:
    """What a pod worker needs to know about its node and cluster."""

    kube: Kube
    slot: Slot
    node_name: str
    host_ip: str
    allocatable: dict[str, str]
    service_env: dict[str, str]
    backoff: Backoff
    mount_record: Path  # machine-wide: mount points some slot created
    mount_uses: Path  # this slot's mount targets
    events: EventRecorder


class PodWorker:
    def __init__(self, ctx: NodeContext, pod: Obj, ip: str) -> None:
        self.ctx = ctx
        self.pod = pod
        self.uid: str = pod["metadata"]["uid"]
        self.ip = ip
        self.netns = f"{ctx.slot.netns_prefix}{self.uid.replace('-', '')[:10]}"
        self.veth = f"{ctx.slot.veth_prefix}{self.uid.replace('-', '')[:10]}"
        self.dir: Path = ctx.slot.pods_dir / self.uid
        self._changed = asyncio.Event()
        spec = pod["spec"]
        policy = spec.get("restartPolicy", "Always")
        self.init = [self._runner(c, policy, init=True) for c in spec.get("initContainers", [])]
        self.apps = [self._runner(c, policy) for c in spec.get("containers", [])]
        self._last_status: Obj | None = None
        self._transitions: dict[str, tuple[str, str]] = {}
        self._sandbox = False
        self._stopping = False
        self._run_task: asyncio.Task[None] | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._terminate_task: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()

    @property
    def name(self) -> str:
        return f"{self.pod['metadata']['namespace']}/{self.pod['metadata']['name']}"

    def _runner(self, c: Obj, policy: str, init: bool = False) -> ContainerRunner:
        return ContainerRunner(
            spec=c,
            restart_policy=policy,
            grace_s=self._grace,
            on_change=self._changed.set,
            on_event=lambda kind, reason, msg: self.ctx.events.record(
                self.pod, c["name"], kind, reason, msg
            ),
            backoff=self.ctx.backoff,
            init=init,
        )

    def _grace(self) -> float:
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))

    def start(self) -> None:
        self._run_task = asyncio.create_task(self._run(), name=f"pod {self.name}")
        self._status_task = asyncio.create_task(self._status_loop(), name=f"status {self.name}")

    def update(self, pod: Obj) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self._stopping:
            grace = pod["metadata"].get("deletionGracePeriodSeconds", self._grace())
            self._stopping = True
            self._terminate_task = asyncio.create_task(self.terminate(float(grace), finalize=True))

    # --- running -------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            for c in self.init + self.apps:
                if mapped_entrypoint(c.spec.get("image", "")) is None:
                    for r in self.init + self.apps:
                        r.set_waiting("ErrImageNeverPull", unmapped_message(r.spec["image"]))
                        r.on_event("Warning", "Failed", unmapped_message(r.spec["image"]))
                    return
            await asyncio.to_thread(
                network.add_pod_netns, self.ctx.slot, self.netns, self.veth, self.ip
            )
            self._sandbox = True
            self._changed.set()
            launches = await self._prepare()
            for runner in self.init:
                # run() restarts a failing init container itself unless restartPolicy is Never.
                await runner.run(launches[runner.name])
                if not runner.succeeded:
                    return
            self._changed.set()
            await asyncio.gather(*(r.run(launches[r.name]) for r in self.apps))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s failed in the kubelet", self.name)
        finally:
            self._changed.set()

    async def _prepare(self) -> dict[str, Launch]:
        """Volumes and env; retries while referenced objects are missing (like the kubelet)."""
        meta = self.pod["metadata"]
        last_error = ""
        while True:
            try:
                resolver = Resolver(self.ctx.kube, meta["namespace"])
                facts = PodFacts(self.pod, self.ip, self.ctx.host_ip, self.ctx.allocatable)
                await materialize(self.ctx.kube, resolver, facts, self.dir / "volumes")
                launches: dict[str, Launch] = {}
                etc_mounts = self._etc_files()
                for r in self.init + self.apps:
                    env = await container_env(resolver, facts, r.spec, self.ctx.service_env)
                    mounts = mounts_for(self.pod, r.spec, self.dir / "volumes")
                    taken = {m["target"] for m in mounts}
                    mounts = [m for m in etc_mounts if m["target"] not in taken] + mounts
                    ensure_mount_points(mounts, self.ctx.mount_record, self.ctx.mount_uses)
                    launches[r.name] = Launch(
                        argv=container_argv(r.spec, env),
                        env=env,
                        cwd=r.spec.get("workingDir") or str(REPO_ROOT),
                        mounts=mounts,
                        netns_path=f"/run/netns/{self.netns}",
                        hostname=meta["name"][:63],
                        pod_dir=self.dir,
                        pod_ip=self.ip,
                    )
                return launches
            except (ConfigError, ApiError) as exc:
                for r in self.init + self.apps:
                    r.set_waiting("CreateContainerConfigError", str(exc))
                    if str(exc) != last_error:
                        r.on_event("Warning", "Failed", f"Error: {exc}")
                last_error = str(exc)
                await asyncio.sleep(2)  # retry period, as the kubelet's pod sync

    def _etc_files(self) -> list[dict[str, Any]]:
        """/etc/hosts (pod name -> pod IP) and /etc/resolv.conf (cluster DNS) for the pod."""
        meta = self.pod["metadata"]
        etc = self.dir / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        hosts = f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{self.ip}\t{meta['name']}\n"
        (etc / "hosts").write_text(hosts)
        mounts = [{"source": str(etc / "hosts"), "target": "/etc/hosts", "readonly": False}]
        if self.pod["spec"].get("dnsPolicy", "ClusterFirst") != "Default":
            (etc / "resolv.conf").write_text(resolv_conf(meta["namespace"], self.ctx.host_ip))
            mounts.append(
                {
                    "source": str(etc / "resolv.conf"),
                    "target": "/etc/resolv.conf",
                    "readonly": False,
                }
            )
        return mounts

    # --- status --------------------------------------------------------------------------

    def _phase(self) -> str:
        if any(r.done and not r.succeeded for r in self.init):
            return "Failed"
        if self.apps and all(r.done for r in self.apps):
            codes = [r.state.get("terminated", {}).get("exitCode", 1) for r in self.apps]
            return "Succeeded" if all(c == 0 for c in codes) else "Failed"
        if any("running" in r.state or r.restart_count or r.last_state for r in self.apps):
            return "Running"
        return "Pending"

    def _condition(self, ctype: str, ok: bool, reason: str = "") -> Obj:
        status = "True" if ok else "False"
        prev = self._transitions.get(ctype)
        if prev is None or prev[0] != status:
            self._transitions[ctype] = (status, now_rfc3339())
        cond: Obj = {
            "type": ctype,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": self._transitions[ctype][1],
        }
        if reason and not ok:
            cond["reason"] = reason
        return cond

    def build_status(self) -> Obj:
        images = {c["name"]: c.get("image", "") for c in self.pod["spec"].get("containers", [])}
        images.update(
            {c["name"]: c.get("image", "") for c in self.pod["spec"].get("initContainers", [])}
        )
        initialized = all(r.succeeded for r in self.init)
        ready = bool(self.apps) and all(r.ready for r in self.apps) and initialized
        scheduled = [
            c
            for c in self.pod.get("status", {}).get("conditions", [])
            if c["type"] == "PodScheduled"
        ]
        conditions = [
            self._condition("PodReadyToStartContainers", self._sandbox),
            self._condition("Initialized", initialized, "ContainersNotInitialized"),
            self._condition("Ready", ready, "ContainersNotReady"),
            self._condition("ContainersReady", ready, "ContainersNotReady"),
            *scheduled,
        ]
        status: Obj = {
            "phase": self._phase(),
            "conditions": conditions,
            "hostIP": self.ctx.host_ip,
            "hostIPs": [{"ip": self.ctx.host_ip}],
            "containerStatuses": [r.status(images[r.name]) for r in self.apps],
            "qosClass": self.pod.get("status", {}).get("qosClass", "BestEffort"),
            "startTime": self.pod.get("status", {}).get("startTime") or now_rfc3339(),
        }
        if self.init:
            status["initContainerStatuses"] = [r.status(images[r.name]) for r in self.init]
        if self._sandbox:
            status["podIP"] = self.ip
            status["podIPs"] = [{"ip": self.ip}]
        return status

    async def _write_status(self) -> bool:
        status = self.build_status()
        if status == self._last_status:
            return True
        meta = self.pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        try:
            await self.ctx.kube.merge_patch(path, {"metadata": {"uid": self.uid}, "status": status})
            self._last_status = status
            return True
        except ApiError as exc:
            log.warning("status of %s not written: %s", self.name, exc)
            return exc.status == 409  # the pod was replaced: nothing left to report to
        except Exception:
            log.exception("status of %s not written", self.name)
            return False

    async def _status_loop(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            if not await self._write_status():
                await asyncio.sleep(1)  # back off before retrying a failed write
                self._changed.set()

    # --- stopping ------------------------------------------------------------------------

    async def terminate(self, grace_s: float, finalize: bool) -> None:
        """Stops all containers (preStop, SIGTERM, grace, SIGKILL), removes the sandbox and, when
        finalize, deletes the pod object for good."""
        self._stopping = True
        for r in self.apps:
            if r.proc is not None and r.proc.returncode is None:
                r.on_event("Normal", "Killing", f"Stopping container {r.name}")
        await asyncio.gather(*(r.stop(grace_s) for r in self.init + self.apps))
        run_task = self._run_task
        if run_task is not None and not run_task.done():
            run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run_task
        for pid in await asyncio.to_thread(network.netns_pids, self.netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(network.delete_pod_netns, self.netns)
        self._sandbox = False
        if finalize:
            await self._write_status()  # the last container states, before the object goes
            meta = self.pod["metadata"]
            path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
            body = {
                "kind": "DeleteOptions",
                "apiVersion": "v1",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid},
            }
            try:
                await self.ctx.kube.delete(path, body)
            except ApiError as exc:
                if exc.status != 409:
                    log.warning("final delete of %s failed: %s", self.name, exc)
        if self._status_task is not None:
            self._status_task.cancel()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.finished.set()
