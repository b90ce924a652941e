"""Probe and lifecycle-hook actions (httpGet, tcpSocket, exec) as the kubelet runs them: HTTP and
TCP from the host to the pod IP over the bridge, exec inside the container's namespaces."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import httpx

from e2e.kube import Obj

log = logging.getLogger(__name__)


@dataclass
class Target:
    """Where a probe of one container goes."""

    pod_ip: str
    ports: dict[str, int]  # named container ports
    pid: int | None  # the container process, for exec
    env: dict[str, str]
    cwd: str


def _port(port: int | str, target: Target) -> int:
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    if port not in target.ports:
        raise ValueError(f"named port {port} not found")
    return target.ports[port]


async def run_action(action: Obj, target: Target, timeout_s: float) -> tuple[bool, str]:
    """Runs one probe/hook action; returns (success, message)."""
    try:
        if "httpGet" in action:
            return await _http(action["httpGet"], target, timeout_s)
        if "tcpSocket" in action:
            return await _tcp(action["tcpSocket"], target, timeout_s)
        if "exec" in action:
            return await _exec(action["exec"].get("command", []), target, timeout_s)
        if "sleep" in action:
            await asyncio.sleep(float(action["sleep"]["seconds"]))
            return True, ""
    except (TimeoutError, OSError, ValueError, httpx.HTTPError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return False, f"unsupported action {sorted(action)}"


async def _http(get: Obj, target: Target, timeout_s: float) -> tuple[bool, str]:
    scheme = str(get.get("scheme", "HTTP")).lower()
    host = get.get("host") or target.pod_ip
    url = f"{scheme}://{host}:{_port(get['port'], target)}{get.get('path', '/')}"
    headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
    headers.setdefault("User-Agent", "kube-probe/1.36")
    headers["Connection"] = "close"
    async with httpx.AsyncClient(verify=False, timeout=timeout_s, trust_env=False) as client:
        resp = await client.get(url, headers=headers)
    ok = 200 <= resp.status_code < 400
    return ok, "" if ok else f"HTTP probe failed with statuscode: {resp.status_code}"


async def _tcp(sock: Obj, target: Target, timeout_s: float) -> tuple[bool, str]:
    host = sock.get("host") or target.pod_ip
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(host, _port(sock["port"], target)), timeout_s
    )
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, ""


async def _exec(command: list[str], target: Target, timeout_s: float) -> tuple[bool, str]:
    if target.pid is None:
        return False, "container is not running"
    proc = await asyncio.create_subprocess_exec(
        "nsenter",
        "-t",
        str(target.pid),
        "-n",
        "-m",
        "-u",
        f"--wd={target.cwd}",
        "--",
        *command,
        env=target.env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False, f"command timed out after {timeout_s}s"
    ok = proc.returncode == 0
    return ok, "" if ok else out.decode(errors="replace")[-1000:]


@dataclass
class ProbeConfig:
    action: Obj
    initial_delay_s: float
    period_s: float
    timeout_s: float
    success_threshold: int
    failure_threshold: int

    @classmethod
    def parse(cls, probe: Obj) -> ProbeConfig:
        return cls(
            action=probe,
            initial_delay_s=float(probe.get("initialDelaySeconds", 0)),
            period_s=float(probe.get("periodSeconds", 10)),
            timeout_s=float(probe.get("timeoutSeconds", 1)),
            success_threshold=int(probe.get("successThreshold", 1)),
            failure_threshold=int(probe.get("failureThreshold", 3)),
        )
