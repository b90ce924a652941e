"""Start, stop and use a local cluster.

CLI: ``python -m e2e.cluster up|down|status|env [--slot N]``. ``up`` builds (or reuses) the
binaries, starts the supervisor (e2e.daemon) in the background and returns once the control
plane and the four nodes are ready; ``env`` prints the exports that point kubectl at it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from e2e import binaries, network
from e2e.controlplane import processes_under
from e2e.daemon import clean_slot, lock_slot
from e2e.layout import Slot, state_root
from e2e.realnode import cleanup as realnode_cleanup

log = logging.getLogger(__name__)
T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]


class WaitTimeout(AssertionError):
    """A named wait ran past its deadline."""


@dataclass
class Cluster:
    """A running cluster, as tests and scripts use it."""

    slot: int
    api_url: str
    kubeconfig: Path
    bin_dir: Path
    run_dir: Path
    pid: int
    real_nodes: dict[str, Any] | None = None
    """What the real nodes are (``nodes``, ``gpu_nodes``, ``image``) or why they failed
    (``error``); None when the cluster runs none."""
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '')}",
        }

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> Cluster:
        return cls(
            slot=int(info["slot"]),
            api_url=str(info["api_url"]),
            kubeconfig=Path(info["kubeconfig"]),
            bin_dir=Path(info["bin_dir"]),
            run_dir=Path(info["run_dir"]),
            pid=int(info["pid"]),
            real_nodes=info.get("real_nodes"),
        )

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def apply(self, namespace: str, manifest: str) -> subprocess.CompletedProcess[str]:
        """`kubectl apply -n NAMESPACE -f -` with the manifest on stdin."""
        return self.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", "-o", "json", *args).stdout)

    def wait_for(
        self, predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25
    ) -> T:
        """Polls predicate until it returns something truthy, which is returned; raises naming
        `what` after timeout seconds. Exceptions of the predicate count as 'not yet' (the last
        one is shown)."""
        end = time.monotonic() + timeout
        last: BaseException | None = None
        while True:
            try:
                value = predicate()
                if value:
                    return value
            except Exception as exc:
                last = exc
            if time.monotonic() > end:
                detail = f" (last error: {last!r})" if last else ""
                raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}{detail}")
            time.sleep(interval)  # poll interval of a wait with a deadline

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        """A container's output (the process kubelet has no log endpoint for kubectl logs)."""
        obj = self.get_json("pod", "-n", namespace, pod)
        name = container or obj["spec"]["containers"][0]["name"]
        path = self.run_dir / "pods" / obj["metadata"]["uid"] / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pod_pids(self, namespace: str, pod: str) -> list[int]:
        """Host pids of the processes running in a pod (e.g. to SIGKILL a replica under load:
        the kubelet then restarts it per restartPolicy, like a crashed container)."""
        uid = self.get_json("pod", "-n", namespace, pod)["metadata"]["uid"]
        return network.netns_pids(f"{Slot(self.slot).netns_prefix}{uid.replace('-', '')[:10]}")

    @property
    def host_ip(self) -> str:
        """The bridge address: the host as pods see it (bind a test server here to reach it
        from pods; loopback is not reachable from a pod's network namespace)."""
        return self.api_url.split("//", 1)[1].rsplit(":", 1)[0]

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"


def start(
    slot: str = "auto",
    follow_parent: bool = False,
    timeout_s: float = 300.0,
    bin_dir: Path | None = None,
    real_nodes: bool = False,
) -> Cluster:
    """Starts a cluster supervisor and returns once it is ready; raises HarnessError otherwise.

    With real_nodes, the kubelet and the node images are built (or found in the caches) first,
    and the cluster also runs the real nodes (e2e/realnode)."""
    network.check_prerequisites()
    bin_dir = bin_dir or binaries.ensure(node=real_nodes)
    state_root().mkdir(parents=True, exist_ok=True)
    fd, status_name = tempfile.mkstemp(prefix="status-", suffix=".jsonl", dir=state_root())
    os.close(fd)
    status_file = Path(status_name)
    argv = [
        sys.executable,
        "-m",
        "e2e.daemon",
        f"--slot={slot}",
        f"--bin-dir={bin_dir}",
        f"--status-file={status_file}",
    ]
    if follow_parent:
        argv.append(f"--exit-with-parent={os.getpid()}")
    if real_nodes:
        argv += _real_node_args()
    out_path = state_root() / f"daemon-{os.getpid()}.out"
    with out_path.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=not follow_parent,
        )
    end = time.monotonic() + timeout_s
    try:
        while True:
            for line in status_file.read_text().splitlines():
                event = json.loads(line)
                if "ready" in event:
                    return Cluster.from_info(event["ready"])
                if "error" in event:
                    raise network.HarnessError(f"cluster failed to start: {event['error']}")
            if proc.poll() is not None:
                tail = out_path.read_text(errors="replace")[-3000:]
                raise network.HarnessError(
                    f"cluster supervisor exited with {proc.returncode} before ready:\n{tail}"
                )
            if time.monotonic() > end:
                proc.terminate()
                raise network.HarnessError(f"cluster not ready within {timeout_s:.0f}s")
            time.sleep(0.5)  # poll interval of a wait with a deadline
    finally:
        status_file.unlink(missing_ok=True)
        if proc.poll() is None or proc.returncode == 0:
            out_path.unlink(missing_ok=True)


def _real_node_args() -> list[str]:
    from e2e.realnode import images

    started = time.monotonic()
    built = images.ensure_all()
    log.info("real-node images ready in %.1fs: %s", time.monotonic() - started, built.runtime_ref)
    return [
        f"--runtime-ref={built.runtime_ref}",
        f"--runtime-archive={built.runtime_archive}",
        f"--pause-archive={built.pause_archive}",
    ]


def running(slot: Slot) -> Cluster | None:
    if not slot.ready_file.exists() or not slot.pid_file.exists():
        return None
    info = json.loads(slot.ready_file.read_text())
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return None
    return Cluster.from_info(info)


def stop(slot: Slot, pid: int | None = None, timeout_s: float = 60.0) -> list[str]:
    """Stops the slot's supervisor and returns what still exists afterwards (should be empty)."""
    if pid is None and slot.pid_file.exists():
        pid = int(slot.pid_file.read_text())
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pid = None
    end = time.monotonic() + timeout_s
    while pid is not None and _alive(pid) and time.monotonic() < end:
        time.sleep(0.2)  # poll interval of a wait with a deadline
    if pid is not None and _alive(pid):
        os.kill(pid, signal.SIGKILL)
    lock = lock_slot(slot)
    if lock is not None:  # nobody runs the slot: remove what a crash may have left
        clean_slot(slot, keep_logs=True)
        lock.close()
    return leftovers(slot)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def leftovers(slot: Slot) -> list[str]:
    """Processes, network devices and namespaces, and mounts of the slot that still exist."""
    found = network.leftovers(slot)
    found += [f"process {pid}" for pid in processes_under(slot.root)]
    return found + realnode_cleanup.leftovers(slot.root)


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    parser.add_argument("--slot", type=int, default=0, help="cluster slot (default 0)")
    parser.add_argument(
        "--no-real-nodes",
        action="store_true",
        help="up: only the process-kubelet nodes (no kubelet/image build, no containerd)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    slot = Slot(args.slot)
    current = running(slot)
    if args.command == "up":
        if current is not None:
            print(f"cluster slot {slot.index} already running (pid {current.pid})", file=sys.stderr)
        else:
            try:
                current = start(slot=str(slot.index), real_nodes=not args.no_real_nodes)
            except network.HarnessError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        print(f"cluster up: {current.api_url} (logs: {current.log_dir})", file=sys.stderr)
        if current.real_nodes and "error" in current.real_nodes:
            print(f"real nodes failed: {current.real_nodes['error']}", file=sys.stderr)
        print(_env_lines(current))
        return 0
    if args.command == "down":
        left = stop(slot)
        if left:
            print(f"left behind: {left}", file=sys.stderr)
            return 1
        print(f"cluster slot {slot.index} down; nothing left behind", file=sys.stderr)
        return 0
    if current is None:
        print(f"no cluster running in slot {slot.index}", file=sys.stderr)
        return 1
    if args.command == "env":
        print(_env_lines(current))
        return 0
    print(f"cluster slot {slot.index}: {current.api_url}, supervisor pid {current.pid}")
    print(current.kubectl("get", "nodes", "-o", "wide", check=False).stdout)
    return 0


def _env_lines(c: Cluster) -> str:
    return f"export KUBECONFIG={c.kubeconfig}\nexport PATH={c.bin_dir}:$PATH"


if __name__ == "__main__":
    sys.exit(_cli())
