"""The images real nodes run, built here with podman (no registry is reachable): a pause image
from a static C program, and Shoal's own image from the project's Dockerfile (``scripts/image
slim``, which caches its debootstrap base and podman's layers). Each is kept as an OCI archive
per image id under the e2e cache; nodes import the archives into their own containerd.
``SHOAL_E2E_IMAGE`` names another local podman image to run instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from e2e.network import HarnessError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_SCRIPT = REPO_ROOT / "scripts" / "image"
PAUSE_REF = "localhost/shoal-e2e-pause:1"
# The operator's default image: nodes also know the runtime image by this name.
DEFAULT_REF = "ghcr.io/shoal-dev/shoal:0.1.0"

PAUSE_C = r"""
#include <signal.h>
#include <unistd.h>
static void done(int sig) { (void)sig; _exit(0); }
int main(void) {
  signal(SIGTERM, done); signal(SIGINT, done);
  for (;;) pause();
}
"""


def cache_root() -> Path:
    base = os.environ.get("SHOAL_E2E_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "shoal-e2e"
    )
    return Path(base) / "images"


@dataclass(frozen=True)
class NodeImages:
    """OCI archives a node imports, and the references pods use."""

    pause_archive: Path
    runtime_archive: Path
    runtime_ref: str
    pause_ref: str = PAUSE_REF


def _run(argv: list[str], what: str, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "")[-3000:]
        raise HarnessError(f"{what} failed ({' '.join(argv[:3])} ...): {tail}")
    return proc  # type: ignore[no-any-return]


def _exists(ref: str) -> bool:
    return subprocess.run(["podman", "image", "exists", ref], check=False).returncode == 0


def _build(context: Path, ref: str, what: str) -> None:
    # runc: crun fails on this host's cgroup layout; the rlimits: podman's defaults exceed the
    # hard limits here; host network: RUN steps reach the package index only that way, with
    # the host's CA bundle (read-only) for pip.
    certs = Path("/etc/ssl/certs")
    argv = ["podman", "build", "--runtime", "runc", "--network", "host"]
    argv += ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
    if (certs / "ca-certificates.crt").exists():
        argv += ["-v", f"{certs}:/etc/ssl/certs:ro"]
        argv += ["--build-arg", "PIP_CERT=/etc/ssl/certs/ca-certificates.crt"]
    argv += ["-t", ref, str(context)]
    log.info("building image %s", ref)
    _run(argv, what, env={**os.environ, "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt"})


def ensure_pause() -> None:
    if _exists(PAUSE_REF):
        return
    with tempfile.TemporaryDirectory(prefix="shoal-pause-") as tmp:
        Path(tmp, "pause.c").write_text(PAUSE_C)
        _run(
            ["gcc", "-static", "-Os", "-o", f"{tmp}/pause", f"{tmp}/pause.c"],
            "compiling the pause program (gcc -static)",
        )
        Path(tmp, "Containerfile").write_text(
            'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n'
        )
        _build(Path(tmp), PAUSE_REF, "building the pause image")


def ensure_runtime() -> str:
    """Shoal's image from the project's Dockerfile (scripts/image slim: seconds when nothing
    changed); returns its reference, the operator's default image."""
    if shutil.which("podman") is None or shutil.which("debootstrap") is None:
        raise HarnessError("real nodes need podman and debootstrap: run scripts/setup-system")
    proc = _run(["bash", str(IMAGE_SCRIPT), "slim"], "scripts/image slim")
    lines = proc.stdout.split()
    if not lines:
        raise HarnessError("scripts/image slim printed no image reference")
    return lines[-1]


def archive(ref: str) -> Path:
    """The image as an OCI archive (cached by image id) for `ctr images import`."""
    image_id = _run(["podman", "image", "inspect", "-f", "{{.Id}}", ref], "podman inspect")
    out = cache_root() / f"{image_id.stdout.strip()[:16]}.oci.tar"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    _run(["podman", "save", "--format", "oci-archive", "-o", str(tmp), ref], f"podman save {ref}")
    tmp.rename(out)
    return out


SPARE_ARCHIVES = 3
"""Archives kept beside the ones in use: each code change makes a new image id and a ~190 MB
archive, and this machine's disk is shared; a few spares serve other checkouts running now."""


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except FileNotFoundError:  # another run pruned it just now
        return 0.0


def prune_archives(keep: set[Path], spare: int = SPARE_ARCHIVES) -> list[Path]:
    """Deletes the cached archives other than `keep` and the `spare` newest; returns them."""
    others = [p for p in cache_root().glob("*.oci.tar") if p not in keep]
    others.sort(key=_mtime, reverse=True)
    gone = others[spare:]
    for p in gone:
        # A run that already opened one keeps reading it (unlinking frees it at its close).
        p.unlink(missing_ok=True)
    return gone


def ensure_all() -> NodeImages:
    """Everything a node needs, built or found in the caches."""
    ensure_pause()
    override = os.environ.get("SHOAL_E2E_IMAGE")
    if override and not _exists(override):
        raise HarnessError(f"SHOAL_E2E_IMAGE={override}: no such podman image here")
    ref = override or ensure_runtime()
    images = NodeImages(
        pause_archive=archive(PAUSE_REF), runtime_archive=archive(ref), runtime_ref=ref
    )
    for p in prune_archives({images.pause_archive, images.runtime_archive}):
        log.info("removed the old node image archive %s", p.name)
    return images
