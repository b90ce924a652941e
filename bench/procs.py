"""Server processes under test: start each in a session of its own, wait until they answer a real
request, stop the whole group (Ray starts helpers of its own) when done."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (held open together while chosen, so none repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


@dataclass(frozen=True)
class ServerSpec:
    name: str
    argv: list[str]
    port: int
    probe_path: str  # a POST that must answer 200 before the server counts as up
    probe_body: bytes
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 90.0


@dataclass(frozen=True)
class Server:
    base: str  # http://127.0.0.1:port
    sid: int  # its session: the server and every helper process it started


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _fields(stat: str) -> list[str]:
    """The fields of a /proc/PID/stat line after the parenthesised command name (which may hold
    spaces): state ppid pgrp session ... utime (index 11) stime (12)."""
    return stat[stat.rindex(")") + 2 :].split()


def _sessions() -> Iterator[tuple[int, int, int]]:
    """(pid, session id, utime + stime in ticks) of every live process, from /proc."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue  # exited meanwhile
        rest = _fields(stat)
        yield int(entry.name), int(rest[3]), int(rest[11]) + int(rest[12])


def session_cpu_seconds(sids: Iterable[int]) -> float:
    """User + system CPU time of every live process in these sessions.

    Each server starts in a session of its own, and everything it starts stays there (Ray's
    workers get process groups of their own, but not sessions). Under a noisy shared machine,
    CPU per request is steadier than requests per second."""
    wanted = set(sids)
    return sum(ticks for _, sid, ticks in _sessions() if sid in wanted) / _CLK_TCK


def pid_cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read().decode(errors="replace")
    rest = _fields(stat)
    return (int(rest[11]) + int(rest[12])) / _CLK_TCK


def post(url: str, body: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


@contextlib.contextmanager
def running(spec: ServerSpec, log_dir: Path, cwd: Path) -> Iterator[Server]:
    """Start the server, yield it once a real request succeeds, then stop it."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.name}.log"
    base = f"http://127.0.0.1:{spec.port}"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            spec.argv,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **spec.env},
            start_new_session=True,
        )
        try:
            _wait_ready(proc, spec, base, log_path)
            yield Server(base, proc.pid)
        finally:
            _stop(proc, spec.name)


def _wait_ready(proc: subprocess.Popen[bytes], spec: ServerSpec, base: str, log_path: Path) -> None:
    deadline = time.monotonic() + spec.start_timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{spec.name} exited with {proc.returncode} while starting; see {log_path}:\n"
                + log_path.read_text(errors="replace")[-3000:]
            )
        try:
            status, body = post(base + spec.probe_path, spec.probe_body, timeout=5.0)
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.25)  # polling a child process's readiness; not test synchronisation
    raise RuntimeError(f"{spec.name} not ready after {spec.start_timeout_s}s ({last}); {log_path}")


def _stop(proc: subprocess.Popen[bytes], name: str, grace_s: float = 20.0) -> None:
    sid = proc.pid  # start_new_session: the leader's pid is the session id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(sid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop within %.0fs; killing its session", name, grace_s)
    # Whatever the leader left behind in its session (Ray's raylet, workers) goes too.
    for pid, s, _ in list(_sessions()):
        if s == sid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
