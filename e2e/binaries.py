"""Finds or builds the control-plane binaries (build-binaries.sh, cached per user and version)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from e2e.network import HarnessError

log = logging.getLogger(__name__)

SCRIPT = Path(__file__).with_name("build-binaries.sh")
REQUIRED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
NODE_REQUIRED = ("kubelet",)


def ensure(timeout_s: float = 3600.0, node: bool = False) -> Path:
    """Returns the folder holding the binaries, building them first when the cache lacks them
    (with node=True also the kubelet that real nodes run).

    The build's progress goes to this process's stderr, so a first (long) build is visible.
    """
    env_path = "/usr/local/go/bin"
    have_go = shutil.which("go") is not None or Path(env_path, "go").exists()
    proc = subprocess.run(
        ["bash", str(SCRIPT), *(["--node"] if node else [])],
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        timeout=timeout_s,
        check=False,
        env=_env(env_path),
    )
    if proc.returncode != 0 and not have_go:
        raise HarnessError("building the e2e control plane needs Go (`go` on PATH): not found")
    if proc.returncode != 0:
        raise HarnessError(f"{SCRIPT} failed with exit code {proc.returncode} (see its stderr)")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise HarnessError(f"{SCRIPT} printed no binary folder")
    bin_dir = Path(lines[-1])
    missing = [b for b in REQUIRED + (NODE_REQUIRED if node else ()) if not (bin_dir / b).is_file()]
    if missing:
        raise HarnessError(f"{bin_dir} lacks {', '.join(missing)} after the build")
    return bin_dir


def _env(extra_path: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{env.get('PATH', '')}:{extra_path}"
    return env
