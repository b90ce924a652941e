"""Architecture rules, checked on the source: the runtime, the gateway and the operator import
nothing of each other but the shared spec types, metric names and logging; inside the operator one
module talks to the Kubernetes API and the pure parts stay pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("runtime", "gateway", "operator")
# What every part may import from another: the spec types (only the operator owns them today),
# the metric names and the log setup live at the top of the package.
SHARED = ("shoal.metric_names", "shoal.logs")


def imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "shoal":  # `from shoal import logs` names the module it takes
                out.update(f"shoal.{a.name}" for a in node.names)
            elif node.level == 0:
                out.add(node.module)
    return out


def uses(mods: set[str], prefix: str) -> bool:
    return any(m == prefix or m.startswith(prefix + ".") for m in mods)


def modules(part: str) -> list[Path]:
    return sorted((ROOT / "shoal" / part).rglob("*.py"))


CASES = [(part, path) for part in PARTS for path in modules(part)]


@pytest.mark.parametrize(
    ("part", "path"), CASES, ids=[str(p.relative_to(ROOT / "shoal")) for _, p in CASES]
)
def test_parts_import_only_what_they_share(part: str, path: Path) -> None:
    mods = imports(path)
    for other in PARTS:
        if other != part:
            assert not uses(mods, f"shoal.{other}"), f"{part} imports shoal.{other}"
    # The top-level package re-exports the runtime's public API: reaching it from inside a part
    # is an arrow back up.
    top = {m for m in mods if m == "shoal" or (m.startswith("shoal.") and m.count(".") == 1)}
    assert top <= set(SHARED) | {f"shoal.{part}"}, f"{part} imports {top - set(SHARED)}"


def test_every_part_has_modules() -> None:
    for part in PARTS:
        assert modules(part), f"shoal/{part} is empty"


OPERATOR_MODULES = modules("operator")


@pytest.mark.parametrize("path", OPERATOR_MODULES, ids=[p.name for p in OPERATOR_MODULES])
def test_operator_layers(path: Path) -> None:
    mods = imports(path)
    if path.name != "kube.py":
        assert not uses(mods, "kubernetes_asyncio"), "only kube.py talks to the API"
        assert not uses(mods, "kubernetes")
    if path.name not in ("handlers.py", "cli.py"):
        assert not uses(mods, "kopf"), "kopf stays in the thin layer"
    if path.name in ("spec.py", "resources.py", "status.py", "crdgen.py", "rbac.py", "settings.py"):
        assert not uses(mods, "asyncio"), "pure modules do no I/O"


@pytest.mark.parametrize("path", modules("runtime") + modules("gateway"))
def test_data_plane_never_uses_kopf(path: Path) -> None:
    assert not uses(imports(path), "kopf")
