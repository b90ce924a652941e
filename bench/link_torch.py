"""Make the main venv's torch importable in bench/.venv-kserve without a second multi-GB install.

Run with the MAIN venv's python: `python -m bench.link_torch bench/.venv-kserve`. It collects torch
and the distributions it requires (recursively, markers evaluated), leaves out those the KServe
venv already has (checking that their versions satisfy torch's specifiers), symlinks the rest's
top-level entries into <venv>/torch-site, and adds a .pth file that appends that folder to
sys.path, so KServe's own pinned packages always win.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version


def closure(root: str) -> dict[str, metadata.Distribution]:
    seen: dict[str, metadata.Distribution] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        dist = metadata.distribution(name)
        seen[key] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def installed_in(venv: Path) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m;"
        "print(json.dumps({d.metadata['Name'].lower().replace('_','-'): d.version"
        " for d in m.distributions()}))"
    )
    out = subprocess.run(
        [str(venv / "bin/python"), "-c", code], check=True, capture_output=True, text=True
    ).stdout
    import json

    result: dict[str, str] = json.loads(out)
    return result


def main() -> int:
    venv = Path(sys.argv[1]).resolve()
    dists = closure("torch")
    present = installed_in(venv)
    torch_reqs = {
        Requirement(s).name.lower().replace("_", "-"): Requirement(s)
        for s in metadata.distribution("torch").requires or []
    }
    link_dir = venv / "torch-site"
    link_dir.mkdir(exist_ok=True)
    for key, dist in sorted(dists.items()):
        if key in present:
            req = torch_reqs.get(key)
            if req is not None and not req.specifier.contains(Version(present[key]), True):
                print(f"link_torch: {key} {present[key]} in {venv} does not satisfy torch's {req}")
                return 1
            continue
        base = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops):
            if top == "__pycache__":
                continue
            target = link_dir / top
            if not target.exists():
                target.symlink_to(base / top)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "zz_bench_torch.pth").write_text(str(link_dir) + "\n")
    print(f"link_torch: torch {metadata.version('torch')} linked into {venv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
