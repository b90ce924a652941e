"""Shoal's image under podman, as a pod runs it: built by scripts/image (cached layers, so a
second build takes seconds), started with the pod's security settings."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
# The settings every Shoal pod runs with (the operator's and the chart's securityContext).
POD_SECURITY = [
    "--read-only",
    "--user",
    "1000:1000",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
]
# On these machines: runc (crun fails on the hybrid cgroup layout) and rlimits within the hard
# limits (podman's defaults exceed them).
PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def build(flavor: str = "slim") -> str:
    """Builds (or finds in the layer cache) the image; returns its reference."""
    out = subprocess.run(
        [str(ROOT / "scripts" / "image"), flavor],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, f"scripts/image {flavor} failed:\n{out.stderr[-4000:]}"
    return out.stdout.strip().splitlines()[-1]


def run(
    image: str, *args: str, entrypoint: str | None = None, inspect_as_root: bool = False
) -> subprocess.CompletedProcess[str]:
    """Runs a command in the image to completion, with the pod's security settings (or, to look
    at the image's files, as root with a read-only root)."""
    security = ["--read-only", "--user", "0"] if inspect_as_root else POD_SECURITY
    cmd = [*PODMAN, "run", "--rm", *LIMITS, *security, "--network", "none"]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run(
        [*cmd, image, *args], capture_output=True, text=True, timeout=120, check=False
    )


class Container:
    """A detached container on the host network (it binds loopback only), with a host folder as
    its /tmp (the pods' emptyDir) so that its --port-file can be read from here."""

    def __init__(
        self,
        image: str,
        tmp: Path,
        *args: str,
        env: dict[str, str] | None = None,
        volumes: dict[Path, str] | None = None,
    ):
        self.name = f"shoal-test-{uuid.uuid4().hex[:10]}"
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o1777)
        envs = [f"--env={k}={v}" for k, v in (env or {}).items()]
        envs += [f"--volume={host}:{where}:ro" for host, where in (volumes or {}).items()]
        cmd = [*PODMAN, "run", "--detach", "--rm", "--name", self.name, *LIMITS, *POD_SECURITY]
        cmd += ["--network", "host", "--volume", f"{tmp}:/tmp", *envs, image, *args]
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)

    def logs(self) -> str:
        out = subprocess.run(
            [*PODMAN, "logs", self.name], capture_output=True, text=True, timeout=30, check=False
        )
        return out.stdout + out.stderr

    def running(self) -> bool:
        out = subprocess.run(
            [*PODMAN, "container", "inspect", "--format", "{{.State.Running}}", self.name],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return out.stdout.strip() == "true"

    def wait_port(self, timeout_s: float = 120.0) -> int:
        """The port the server wrote to /tmp/port once listening."""
        port_file = self.tmp / "port"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                return int(port_file.read_text())
            assert self.running(), f"container {self.name} exited:\n{self.logs()}"
            time.sleep(0.2)
        raise AssertionError(f"no port from {self.name} in {timeout_s}s:\n{self.logs()}")

    def wait_ready(self, url: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=5).status_code == 200:
                    return
            assert self.running(), f"container {self.name} exited:\n{self.logs()}"
            time.sleep(0.2)
        raise AssertionError(f"{url} not ready in {timeout_s}s:\n{self.logs()}")

    def stop(self) -> None:
        subprocess.run(
            [*PODMAN, "rm", "--force", "--time", "5", self.name],
            capture_output=True,
            timeout=60,
            check=False,
        )


@contextlib.contextmanager
def container(
    image: str,
    tmp: Path,
    *args: str,
    env: dict[str, str] | None = None,
    volumes: dict[Path, str] | None = None,
) -> Iterator[Container]:
    c = Container(image, tmp, *args, env=env, volumes=volumes)
    try:
        yield c
    finally:
        c.stop()
