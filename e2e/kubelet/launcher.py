"""Starts one container process: joins the pod's network namespace, makes a private mount and UTS
namespace, mounts the pod's volumes and a minimal /dev, then execs the container command.

Run as ``python -I launcher.py SPEC.json`` by the process kubelet; standard library only so that
it starts fast. The exec keeps the pid, so the kubelet signals and reaps the container itself.
Failures before the exec exit with code 127 and a message on stderr (the container log).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)

# Device nodes a process commonly opens; everything else of the host's /dev stays hidden.
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_DEVICE_DIRS = ("pts", "mqueue")
_SYMLINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "pts/ptmx",
}


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} -> {target}",
    )


def _bind(source: str, target: str, readonly: bool) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    if readonly:
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def _private_dev(host_dev_view: str, termination_log: str | None) -> None:
    """Replaces /dev (in this mount namespace only) with a tmpfs holding a few host devices, a
    private /dev/shm and the container's termination-log file."""
    os.makedirs(host_dev_view, exist_ok=True)
    _mount("/dev", host_dev_view, None, MS_BIND | MS_REC)
    _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    for name in _DEVICES + tuple(n for n in os.listdir(host_dev_view) if n.startswith("nvidia")):
        src = os.path.join(host_dev_view, name)
        if os.path.exists(src) and not os.path.isdir(src):
            open(os.path.join("/dev", name), "w").close()
            _mount(src, os.path.join("/dev", name), None, MS_BIND)
    for name in _DEVICE_DIRS:
        src = os.path.join(host_dev_view, name)
        if os.path.isdir(src):
            os.mkdir(os.path.join("/dev", name))
            _mount(src, os.path.join("/dev", name), None, MS_BIND | MS_REC)
    os.mkdir("/dev/shm")
    _mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=65536k")
    for name, target in _SYMLINKS.items():
        if not os.path.lexists(os.path.join("/dev", name)):
            os.symlink(target, os.path.join("/dev", name))
    _check(_libc.umount2(host_dev_view.encode(), MNT_DETACH), f"umount {host_dev_view}")
    if termination_log and termination_log.startswith("/dev/"):
        open(termination_log, "w").close()


def setup(spec: dict[str, Any]) -> None:
    fd = os.open(spec["netns"], os.O_RDONLY)
    _check(_libc.setns(fd, CLONE_NEWNET), "setns net")
    os.close(fd)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare mount+uts")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    hostname = spec["hostname"].encode()[:64]
    _check(_libc.sethostname(hostname, len(hostname)), "sethostname")
    termination = spec.get("termination_log") or {}
    mounts: list[dict[str, Any]] = sorted(spec["mounts"], key=lambda m: len(m["target"]))
    if termination.get("target"):
        mounts.append({"source": termination["source"], "target": termination["target"]})
    # Hold every source open first: a volume mounted over e.g. /tmp would otherwise hide the
    # sources (in the run dir) of the mounts after it. Mounting /proc/self/fd/N binds the file.
    fds = [os.open(m["source"], os.O_PATH) for m in mounts]
    kept = [(path, os.open(path, os.O_PATH)) for path in spec.get("keep_visible", [])]
    _private_dev(spec["host_dev_view"], termination.get("target"))
    for m, fd in zip(mounts, fds, strict=True):
        _bind(f"/proc/self/fd/{fd}", m["target"], bool(m.get("readonly")))
        os.close(fd)
    for path, fd in kept:
        _keep_visible(path, fd)


def _keep_visible(path: str, fd: int) -> None:
    """Binds the harness's code (repo, interpreter) back where a volume hid it: e.g. a checkout
    under /tmp when the pod mounts an emptyDir at /tmp, as Shoal's replicas do."""
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
            return
    except FileNotFoundError:
        pass
    try:
        os.makedirs(path, exist_ok=True)  # inside the volume that hides it
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"{path} (the harness's code, which this pod runs) is hidden by one of the pod's "
            f"volumes and cannot be bound back ({exc.strerror}); use a volume that does not "
            "cover it, or a checkout outside it",
        ) from exc
    _bind(f"/proc/self/fd/{fd}", path, False)
    os.close(fd)


def main() -> None:
    with open(sys.argv[1]) as f:
        spec: dict[str, Any] = json.load(f)
    try:
        setup(spec)
        os.chdir(spec["cwd"])
    except OSError as exc:
        sys.stderr.write(f"shoal-kubelet: container setup failed: {exc}\n")
        sys.exit(127)
    argv: list[str] = spec["argv"]
    env: dict[str, str] = spec["env"]
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        sys.stderr.write(f"shoal-kubelet: exec {argv[0]!r} failed: {exc}\n")
        sys.exit(127)


if __name__ == "__main__":
    main()
