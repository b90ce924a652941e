"""The cluster supervisor process: owns one slot, runs the control plane and the process kubelet,
and on SIGTERM (or its parent's death, for test sessions) takes everything down again.

Started by ``e2e.cluster`` (``python -m e2e.daemon --slot auto --status-file F --bin-dir D``); it
reports progress as JSON lines in the status file: ``{"slot": n}``, then ``{"ready": {...}}`` or
``{"error": "..."}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any

from e2e import controlplane, network, pki
from e2e.kube import Kube
from e2e.kubelet import server as kubelet_server
from e2e.kubelet.container import Backoff
from e2e.kubelet.kubelet import Kubelet
from e2e.kubelet.services import ServiceProxy, serve_dns
from e2e.kubelet.volumes import remove_mount_points
from e2e.layout import MAX_SLOTS, NODE_NAMES, Slot, state_root
from e2e.realnode import cleanup as realnode_cleanup
from e2e.realnode.config import real_nodes
from e2e.realnode.images import NodeImages
from e2e.realnode.supervise import RealNodes

log = logging.getLogger(__name__)


class Terminated(BaseException):
    """SIGTERM/SIGINT arrived while the cluster was starting."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signal.Signals(signum).name)


def lock_slot(slot: Slot) -> IO[str] | None:
    """Takes the slot's lock for the life of this process, or returns None when it is held."""
    state_root().mkdir(parents=True, exist_ok=True)
    f = slot.lock_path.open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def clean_slot(slot: Slot, keep_logs: bool = False) -> list[str]:
    """Removes whatever a run of this slot left behind (call with the lock held): processes,
    network devices, mount points it created, and its run dir (except the logs if keep_logs)."""
    removed: list[str] = []
    for netns in network.netns_names(slot):
        for pid in network.netns_pids(netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                removed.append(f"pod process {pid}")
    removed += [f"process {pid}" for pid in controlplane.kill_processes_under(slot.root)]
    removed += realnode_cleanup.remove(slot.root)
    removed += network.teardown(slot)
    (slot.root / "mount-uses.txt").unlink(missing_ok=True)
    remove_mount_points(state_root() / "mount-points.txt", _mount_points_in_use(slot.index))
    if realnode_cleanup.mounts_under(slot.root):
        # Never delete through a mount: leave the folder for `down` to report.
        log.error("mounts left under %s; not removing it", slot.root)
    elif slot.root.exists():
        for entry in slot.root.iterdir():
            if keep_logs and entry == slot.log_dir:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    return removed


def _mount_points_in_use(except_index: int) -> set[str]:
    """Mount targets used by the other slots that are running now (their lock is held)."""
    used: set[str] = set()
    for i in range(MAX_SLOTS):
        other = Slot(i)
        if i == except_index or not (other.root / "mount-uses.txt").exists():
            continue
        lock = lock_slot(other)
        if lock is not None:  # not running: its uses do not count
            lock.close()
            continue
        with contextlib.suppress(OSError):
            used |= set((other.root / "mount-uses.txt").read_text().split())
    return used


def sweep_free_slots(except_index: int) -> list[str]:
    """Cleans crashed runs' leftovers in every other slot that nobody holds."""
    removed: list[str] = []
    for i in range(MAX_SLOTS):
        other = Slot(i)
        if i == except_index:
            continue
        lock = lock_slot(other)
        if lock is None:
            continue
        try:
            if (
                network.leftovers(other)
                or controlplane.processes_under(other.root)
                or realnode_cleanup.leftovers(other.root)
            ):
                removed += [f"slot {i}: {item}" for item in clean_slot(other, keep_logs=True)]
        finally:
            lock.close()
    return removed


class Reporter:
    def __init__(self, path: Path | None) -> None:
        self.path = path

    def send(self, **event: Any) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(event) + "\n")


async def _nodes_ready(kube: Kube, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    pending: list[str] = list(NODE_NAMES)
    while time.monotonic() < end:
        pending = []
        for name in NODE_NAMES:
            node = await kube.get(f"/api/v1/nodes/{name}")
            taints = (node or {}).get("spec", {}).get("taints") or []
            if node is None or any(t["key"].startswith("node.kubernetes.io/") for t in taints):
                pending.append(name)
        if not pending:
            return
        await asyncio.sleep(0.5)
    raise network.HarnessError(
        f"nodes not ready (not-ready taint kept) after {deadline_s}s: {pending}"
    )


async def _run_nodes(
    slot: Slot,
    cp: controlplane.ControlPlane,
    keys: pki.Pki,
    reporter: Reporter,
    info: dict[str, Any],
    real: RealNodes | None,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    kube = Kube(slot.api_url, keys)
    kubelet = Kubelet(kube, slot, Backoff())
    kubelet.start()
    proxy = ServiceProxy(kube, slot)
    proxy_task = asyncio.create_task(proxy.run(stop))
    dns_task = asyncio.create_task(serve_dns(slot.bridge_ip, proxy, stop))
    server = asyncio.create_task(
        kubelet_server.serve(
            slot.bridge_ip, keys.apiserver_crt, keys.apiserver_key, kubelet.log_path, stop
        )
    )
    try:
        await _nodes_ready(kube, 90)
        if real is not None:
            info["real_nodes"] = await _start_real(real, kube)
        slot.ready_file.write_text(json.dumps(info))
        reporter.send(ready=info)
        log.info("cluster ready: %s", info)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)
            dead = cp.check_alive()
            if dead:
                log.error("control plane component died: %s; shutting down", dead)
                break
            if real is not None and (dead := real.check_alive()):
                log.error("real node component died: %s", dead)
    finally:
        log.info("stopping pods and nodes")
        stop.set()
        if real is not None:
            log.info("real nodes stopped; removed: %s", await asyncio.to_thread(real.stop))
        await kubelet.shutdown(grace_s=2.0)
        await asyncio.gather(server, proxy_task, dns_task, return_exceptions=True)
        await kube.aclose()


async def _start_real(real: RealNodes, kube: Kube) -> dict[str, Any]:
    """Starts the real nodes; a failure is reported to the tests that need them (the real_nodes
    fixture), not to the rest of the session."""
    try:
        return await real.start(kube, deadline_s=180)
    except Exception as exc:
        log.exception("real nodes failed to start")
        return {"error": f"{type(exc).__name__}: {exc}"}


def serve(args: argparse.Namespace) -> int:
    reporter = Reporter(Path(args.status_file) if args.status_file else None)
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGINT, _raise_terminated)
    if args.exit_with_parent:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != args.exit_with_parent:
            return 1
    indices = range(MAX_SLOTS) if args.slot == "auto" else [int(args.slot)]
    lock = slot = None
    for i in indices:
        lock = lock_slot(Slot(i))
        if lock is not None:
            slot = Slot(i)
            break
    if slot is None:
        reporter.send(error=f"no free cluster slot among {list(indices)} (each is locked)")
        return 3
    removed = clean_slot(slot)
    removed += sweep_free_slots(except_index=slot.index)
    slot.log_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=slot.log_dir / "cluster.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if removed:
        log.warning("removed leftovers of a previous run: %s", removed)
    slot.pid_file.write_text(str(os.getpid()))
    reporter.send(slot=slot.index, pid=os.getpid())
    cp: controlplane.ControlPlane | None = None
    try:
        network.check_prerequisites()
        network.setup_bridge(slot)
        service_ip = str(slot.service_network.network_address + 1)
        keys = pki.generate(
            slot.pki_dir,
            slot.api_url,
            [slot.bridge_ip],
            service_ip,
            f"shoal-e2e-{slot.index}",
            node_names=tuple(n.name for n in real_nodes(slot)),
        )
        shutil.copy(keys.kubeconfig("admin"), slot.kubeconfig)
        cp = controlplane.ControlPlane(slot, Path(args.bin_dir), keys)
        cp.start(deadline_scale=args.deadline_scale)
        info = {
            "slot": slot.index,
            "pid": os.getpid(),
            "api_url": slot.api_url,
            "kubeconfig": str(slot.kubeconfig),
            "bin_dir": args.bin_dir,
            "run_dir": str(slot.root),
        }
        real = None
        if args.runtime_ref:
            images = NodeImages(
                pause_archive=Path(args.pause_archive),
                runtime_archive=Path(args.runtime_archive),
                runtime_ref=args.runtime_ref,
            )
            real = RealNodes(slot, keys, Path(args.bin_dir), images)
        asyncio.run(_run_nodes(slot, cp, keys, reporter, info, real))
        return 0
    except Terminated:
        log.info("terminated while starting")
        return 0
    except Exception as exc:
        log.exception("cluster failed")
        reporter.send(error=f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if cp is not None:
            cp.stop()
        leftovers = clean_slot(slot, keep_logs=True)
        log.info("slot %d torn down; removed at the end: %s", slot.index, leftovers)
        lock.close()  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.daemon")
    parser.add_argument("--slot", default="auto", help="slot number or 'auto' (first free)")
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--status-file")
    parser.add_argument("--exit-with-parent", type=int, default=0, help="parent pid to follow")
    parser.add_argument("--deadline-scale", type=float, default=1.0)
    # Real nodes (started when a runtime image is given): the images they import.
    parser.add_argument("--runtime-ref", default="")
    parser.add_argument("--runtime-archive", default="")
    parser.add_argument("--pause-archive", default="")
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
