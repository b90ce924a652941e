"""What a real node leaves on the host, found and removed by path: pod processes (by the network
namespace files under the run dir), and mounts under the run dir (container root filesystems,
netns files, kubelet volumes). The slot's clean-up calls this before it removes the run dir."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from e2e.controlplane import kill_all


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path, deepest first (the order to unmount them in)."""
    prefix = str(path).rstrip("/") + "/"
    found: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            target = line.split()[4].replace("\\040", " ")
            if target.startswith(prefix):
                found.append(target)
    return sorted(set(found), key=lambda t: t.count("/"), reverse=True)


def _netns_inodes(path: Path) -> set[int]:
    inodes: set[int] = set()
    for target in mounts_under(path):
        if "/netns/" in target:
            with contextlib.suppress(OSError):
                inodes.add(os.stat(target).st_ino)
    return inodes


def pod_processes(path: Path) -> list[int]:
    """Processes living in a network namespace that a node under path created (containers)."""
    inodes = _netns_inodes(path)
    if not inodes:
        return []
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                found.append(int(entry))
    return found


def remove(path: Path) -> list[str]:
    """Kills pod processes and unmounts everything under path; returns what it removed."""
    removed = [f"container process {pid}" for pid in kill_all(pod_processes(path))]
    for target in mounts_under(path):
        # Lazy: a mount still referenced by a dying process goes once that process is gone.
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)
        removed.append(f"mount {target}")
    return removed


def leftovers(path: Path) -> list[str]:
    found = [f"container process {pid}" for pid in pod_processes(path)]
    return found + [f"mount {t}" for t in mounts_under(path)]
