"""Architecture rules, checked on the source: one module talks to the Kubernetes API, the pure
parts stay pure, and the control plane never reaches into the data plane (or back)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "shoal" / "operator"
RUNTIME = ROOT / "shoal" / "runtime"


def imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def uses(mods: set[str], prefix: str) -> bool:
    return any(m == prefix or m.startswith(prefix + ".") for m in mods)


OPERATOR_MODULES = sorted(OPERATOR.rglob("*.py"))


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
    assert not uses(mods, "shoal.runtime"), "the control plane never imports the data plane"


RUNTIME_MODULES = sorted(RUNTIME.rglob("*.py"))


@pytest.mark.parametrize(
    "path", RUNTIME_MODULES, ids=[str(p.relative_to(RUNTIME)) for p in RUNTIME_MODULES]
)
def test_runtime_never_imports_the_operator(path: Path) -> None:
    mods = imports(path)
    assert not uses(mods, "shoal.operator")
    assert not uses(mods, "kopf")
