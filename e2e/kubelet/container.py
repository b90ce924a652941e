"""One container of a pod: its process (via the launcher), restarts with back-off, probes, and its
entry in ``status.containerStatuses``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.kube import Obj
from e2e.kubelet.podspec import REPO_ROOT
from e2e.kubelet.probes import ProbeConfig, Target, run_action

log = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("launcher.py")
# What a container runs from the host: kept visible even under a volume that covers it.
KEEP_VISIBLE = list(dict.fromkeys([str(REPO_ROOT), sys.prefix, sys.base_prefix]))


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Backoff:
    """Restart back-off: kubelet's doubling, with a shorter start so tests see restarts soon."""

    initial_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 60.0


@dataclass
class Launch:
    """Everything the launcher needs, resolved by the pod worker."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    mounts: list[dict[str, Any]]
    netns_path: str
    hostname: str
    pod_dir: Path
    pod_ip: str


@dataclass
class ContainerRunner:
    spec: Obj
    restart_policy: str
    grace_s: Callable[[], float]
    on_change: Callable[[], None]
    on_event: Callable[[str, str, str], None]  # (Normal|Warning, reason, message)
    backoff: Backoff
    init: bool = False
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    succeeded: bool = False  # init containers: exited 0
    done: bool = False  # no further restarts
    proc: asyncio.subprocess.Process | None = None
    launch: Launch | None = None
    _stopping: bool = False
    _kill_reason: str | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def set_waiting(self, reason: str, message: str = "") -> None:
        waiting = {"reason": reason, **({"message": message} if message else {})}
        if self.state != {"waiting": waiting}:
            self.state = {"waiting": waiting}
            self.on_change()

    def status(self, image: str) -> Obj:
        out: Obj = {
            "name": self.name,
            "image": image,
            "imageID": "",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.started,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.proc is not None:
            out["containerID"] = f"shoal-process://{self.proc.pid}"
        return out

    # --- process lifecycle ---------------------------------------------------------------

    async def _start(self, launch: Launch) -> asyncio.subprocess.Process:
        cdir = launch.pod_dir / "containers" / self.name
        cdir.mkdir(parents=True, exist_ok=True)
        term_path = self.spec.get("terminationMessagePath", "/dev/termination-log")
        term_file = cdir / "termination-log"
        term_file.write_text("")
        spec = {
            "netns": launch.netns_path,
            "hostname": launch.hostname,
            "mounts": launch.mounts,
            "host_dev_view": str(cdir / "hostdev"),
            "termination_log": {"source": str(term_file), "target": term_path},
            "keep_visible": KEEP_VISIBLE,
            "cwd": launch.cwd,
            "argv": launch.argv,
            "env": launch.env,
        }
        spec_file = cdir / "launch.json"
        spec_file.write_text(json.dumps(spec))
        logf = (launch.pod_dir / "logs").joinpath(f"{self.name}.log")
        logf.parent.mkdir(parents=True, exist_ok=True)
        with logf.open("ab") as out:
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                str(LAUNCHER),
                str(spec_file),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def _termination_message(self, launch: Launch, exit_code: int) -> str:
        term_file = launch.pod_dir / "containers" / self.name / "termination-log"
        msg = term_file.read_text(errors="replace")[:4096] if term_file.exists() else ""
        policy = self.spec.get("terminationMessagePolicy", "File")
        if not msg and policy == "FallbackToLogsOnError" and exit_code != 0:
            logf = launch.pod_dir / "logs" / f"{self.name}.log"
            lines = logf.read_text(errors="replace").splitlines()[-80:] if logf.exists() else []
            msg = "\n".join(lines)[-2048:]
        return msg

    async def run(self, launch: Launch) -> None:
        """Runs the container until it is done (restart policy) or stopped."""
        self.launch = launch
        delay = self.backoff.initial_s
        while not self._stopping:
            started_at = now_rfc3339()
            t0 = time.monotonic()
            self._kill_reason = None
            self.proc = await self._start(launch)
            self.on_event("Normal", "Started", f"Started container {self.name}")
            self.state = {"running": {"startedAt": started_at}}
            self.started = "startupProbe" not in self.spec
            self.ready = self.init or ("readinessProbe" not in self.spec and self.started)
            self.on_change()
            probes = asyncio.create_task(self._probe_loop(launch))
            rc = await self.proc.wait()
            probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probes
            _kill_group(self.proc.pid)
            exit_code = rc if rc >= 0 else 128 - rc
            reason = self._kill_reason or ("Completed" if exit_code == 0 else "Error")
            terminated: Obj = {
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": started_at,
                "finishedAt": now_rfc3339(),
                "containerID": f"shoal-process://{self.proc.pid}",
            }
            if rc < 0:
                terminated["signal"] = -rc
            message = self._termination_message(launch, exit_code)
            if message:
                terminated["message"] = message
            self.ready = False
            self.state = {"terminated": terminated}
            restart = not self._stopping and (
                (self.restart_policy == "Always" and not self.init)
                or (self.restart_policy != "Never" and exit_code != 0)
            )
            if self.init and exit_code == 0:
                self.succeeded = True
            if not restart:
                self.done = True
                self.on_change()
                return
            if time.monotonic() - t0 > self.backoff.reset_after_s:
                delay = self.backoff.initial_s
            self.last_state = {"terminated": terminated}
            self.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {delay:g}s restarting failed container={self.name}",
                }
            }
            self.on_change()
            self.on_event("Warning", "BackOff", self.state["waiting"]["message"])
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            delay = min(delay * 2, self.backoff.max_s)
            self.restart_count += 1

    async def _probe_loop(self, launch: Launch) -> None:
        assert self.proc is not None
        target = Target(
            pod_ip=launch.pod_ip,
            ports={
                p["name"]: p["containerPort"] for p in self.spec.get("ports", []) if "name" in p
            },
            pid=self.proc.pid,
            env=launch.env,
            cwd=launch.cwd,
        )
        if self.init:
            return
        if "startupProbe" in self.spec:
            cfg = ProbeConfig.parse(self.spec["startupProbe"])
            if not await self._probe_until(cfg, target, want=True):
                await self._kill_for("startup probe failed")
                return
            self.started = True
            self.ready = "readinessProbe" not in self.spec
            self.on_change()
        tasks = []
        if "readinessProbe" in self.spec:
            tasks.append(self._readiness(ProbeConfig.parse(self.spec["readinessProbe"]), target))
        if "livenessProbe" in self.spec:
            tasks.append(self._liveness(ProbeConfig.parse(self.spec["livenessProbe"]), target))
        await asyncio.gather(*tasks)

    async def _probe_until(self, cfg: ProbeConfig, target: Target, want: bool) -> bool:
        """Probes until `want` is reached (its threshold) or the opposite threshold is hit."""
        await asyncio.sleep(cfg.initial_delay_s)
        successes = failures = 0
        while True:
            ok, _ = await run_action(cfg.action, target, cfg.timeout_s)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if want and successes >= cfg.success_threshold:
                return True
            if failures >= cfg.failure_threshold:
                return False
            await asyncio.sleep(cfg.period_s)

    async def _readiness(self, cfg: ProbeConfig, target: Target) -> None:
        await asyncio.sleep(cfg.initial_delay_s)
        successes = failures = 0
        while True:
            ok, msg = await run_action(cfg.action, target, cfg.timeout_s)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            ready = self.ready
            if successes >= cfg.success_threshold:
                ready = True
            elif failures >= cfg.failure_threshold:
                ready = False
            if ready != self.ready:
                log.info("container %s readiness -> %s %s", self.name, ready, msg)
                if not ready:
                    self.on_event("Warning", "Unhealthy", f"Readiness probe failed: {msg}")
                self.ready = ready
                self.on_change()
            await asyncio.sleep(cfg.period_s)

    async def _liveness(self, cfg: ProbeConfig, target: Target) -> None:
        # want=False: probes for as long as it succeeds; returns once the failures hit.
        await self._probe_until(cfg, target, want=False)
        await self._kill_for("liveness probe failed")

    async def _kill_for(self, why: str) -> None:
        log.info("container %s: %s, killing", self.name, why)
        self.on_event("Warning", "Unhealthy", why)
        self.on_event("Normal", "Killing", f"Container {self.name} {why}, will be restarted")
        self._kill_reason = "Error"
        await self.signal_and_wait(self.grace_s())

    # --- stopping ------------------------------------------------------------------------

    async def signal_and_wait(self, grace_s: float) -> None:
        """SIGTERM, wait up to grace_s for the process to exit, then SIGKILL its group."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), max(grace_s, 0.0))
        except TimeoutError:
            log.info("container %s ignored SIGTERM for %.1fs, SIGKILL", self.name, grace_s)
            _kill_group(proc.pid)
            await proc.wait()

    async def stop(self, grace_s: float, pre_stop: bool = True) -> None:
        """Stops for good: preStop hook, SIGTERM, grace period, SIGKILL."""
        self._stopping = True
        self._wake.set()
        deadline = time.monotonic() + grace_s
        hook = self.spec.get("lifecycle", {}).get("preStop")
        proc = self.proc
        if pre_stop and hook and proc is not None and proc.returncode is None and self.launch:
            target = Target(self.launch.pod_ip, {}, proc.pid, self.launch.env, self.launch.cwd)
            ok, msg = await run_action(hook, target, max(grace_s, 0.1))
            if not ok:
                log.info("preStop hook of %s failed: %s", self.name, msg)
        await self.signal_and_wait(deadline - time.monotonic())


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _die_with_parent() -> None:
    """Child side, before exec: the container dies with the kubelet (no orphans after a crash)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
