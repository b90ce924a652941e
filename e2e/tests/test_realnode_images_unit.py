"""The node image archive cache stays bounded: archives in use and a few spares survive a
prune, the older ones go (no podman, no cluster)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from e2e.realnode import images


def _archives(root: Path, n: int) -> list[Path]:
    """n archives, the first the oldest (mtimes a minute apart)."""
    out = []
    for i in range(n):
        p = root / f"{i:016x}.oci.tar"
        p.write_bytes(b"x")
        os.utime(p, (1_800_000_000 + 60 * i, 1_800_000_000 + 60 * i))
        out.append(p)
    return out


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The archive cache, empty, in a folder of the test's own."""
    monkeypatch.setenv("SHOAL_E2E_CACHE", str(tmp_path))
    out = images.cache_root()
    out.mkdir(parents=True)
    return out


def test_prune_keeps_what_is_in_use_and_the_newest_spares(root: Path) -> None:
    made = _archives(root, 8)
    writing = root / "ffffffffffffffff.oci.tmp"  # a save in progress is never counted
    writing.write_bytes(b"x")
    in_use = {made[0], made[7]}  # e.g. an old pause archive and the new runtime one

    gone = images.prune_archives(in_use, spare=3)

    assert sorted(gone) == made[1:4]
    assert sorted(root.iterdir()) == sorted([made[0], *made[4:], writing])


def test_prune_with_nothing_beyond_the_spares_removes_nothing(root: Path) -> None:
    made = _archives(root, 3)
    assert images.prune_archives({made[2]}, spare=3) == []
    assert all(p.exists() for p in made)
