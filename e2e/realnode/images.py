"""The images real nodes run, built here with podman (no registry is reachable): a Debian base
from debootstrap, a pause image from a static C program, and Shoal's runtime image. Each is
cached (podman's store, plus an OCI archive per image under the e2e cache) and rebuilt only when
its inputs change; nodes import the archives into their own containerd.

Until the project's own image build (scripts/image) exists, the runtime image is built here from
the checkout; ``SHOAL_E2E_IMAGE`` names another local podman image to use instead.
"""

from __future__ import annotations

import hashlib
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
BASE_REF = "localhost/shoal-e2e-base:bookworm-slim"
PAUSE_REF = "localhost/shoal-e2e-pause:1"
RUNTIME_REPO = "localhost/shoal-e2e-runtime"
# The operator's default image: nodes also know the runtime image by this name.
DEFAULT_REF = "ghcr.io/shoal-dev/shoal:0.1.0"
DEBIAN_MIRROR = os.environ.get("SHOAL_E2E_DEBIAN_MIRROR", "http://deb.debian.org/debian")
RUNTIME_UID = 1000

PAUSE_C = r"""
#include <signal.h>
#include <unistd.h>
static void done(int sig) { (void)sig; _exit(0); }
int main(void) {
  signal(SIGTERM, done); signal(SIGINT, done);
  for (;;) pause();
}
"""

RUNTIME_CONTAINERFILE = f"""
FROM {BASE_REF}
COPY requirements.txt /build/requirements.txt
RUN python3 -m venv /opt/shoal \\
 && /opt/shoal/bin/pip install --no-cache-dir --disable-pip-version-check \\
      -r /build/requirements.txt
COPY src /build/src
RUN /opt/shoal/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \\
      /build/src && rm -rf /build
COPY examples /app/examples
ENV PATH=/opt/shoal/bin:/usr/bin:/bin PYTHONPATH=/app PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
USER {RUNTIME_UID}:{RUNTIME_UID}
ENTRYPOINT ["shoal"]
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


def ensure_base() -> None:
    """A minimal Debian bookworm with python3 (debootstrap, ~30 s once), as a podman image."""
    if _exists(BASE_REF):
        return
    if shutil.which("debootstrap") is None or shutil.which("podman") is None:
        raise HarnessError("real nodes need podman and debootstrap: run scripts/setup-system")
    with tempfile.TemporaryDirectory(prefix="shoal-base-") as tmp:
        root = Path(tmp, "root")
        log.info("debootstrap bookworm from %s", DEBIAN_MIRROR)
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(root),
                DEBIAN_MIRROR,
            ],
            "debootstrap of the base image",
        )
        # Package caches, docs and locales are a third of the tree: every node imports it and
        # every `down` deletes it, on a disk shared with everything else.
        for sub in (
            "var/cache/apt",
            "var/lib/apt/lists",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/locale",
            "usr/share/info",
        ):
            shutil.rmtree(root / sub, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        _run(["podman", "import", "-", BASE_REF], "podman import of the base", stdin=tar.stdout)
        tar.wait()


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


def _requirements() -> list[str]:
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def _runtime_inputs() -> list[Path]:
    files = [REPO_ROOT / "pyproject.toml", REPO_ROOT / "README.md"]
    for top in ("shoal", "examples"):
        files += sorted(
            p for p in (REPO_ROOT / top).rglob("*") if p.is_file() and "__pycache__" not in p.parts
        )
    return files


def runtime_tag() -> str:
    """A content hash of everything the runtime image is built from."""
    h = hashlib.sha256(RUNTIME_CONTAINERFILE.encode())
    for p in _runtime_inputs():
        h.update(str(p.relative_to(REPO_ROOT)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]


def ensure_runtime() -> str:
    """Builds Shoal's runtime image from the checkout (cached by content); returns its ref."""
    ref = f"{RUNTIME_REPO}:{runtime_tag()}"
    if _exists(ref):
        return ref
    with tempfile.TemporaryDirectory(prefix="shoal-runtime-") as tmp:
        ctx = Path(tmp)
        (ctx / "requirements.txt").write_text("\n".join(_requirements()) + "\n")
        src = ctx / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(REPO_ROOT / name, src / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(REPO_ROOT / "shoal", src / "shoal", ignore=ignore)
        shutil.copytree(REPO_ROOT / "examples", ctx / "examples", ignore=ignore)
        (ctx / "Containerfile").write_text(RUNTIME_CONTAINERFILE)
        _build(ctx, ref, "building the runtime image")
    return ref


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


def ensure_all() -> NodeImages:
    """Everything a node needs, built or found in the caches."""
    ensure_base()
    ensure_pause()
    override = os.environ.get("SHOAL_E2E_IMAGE")
    if override and not _exists(override):
        raise HarnessError(f"SHOAL_E2E_IMAGE={override}: no such podman image here")
    ref = override or ensure_runtime()
    return NodeImages(
        pause_archive=archive(PAUSE_REF), runtime_archive=archive(ref), runtime_ref=ref
    )
