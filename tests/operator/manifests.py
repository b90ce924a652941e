"""The invalid-manifest table (invalid_manifests.yaml) and how its cases become manifests: shared
by the pure spec tests and the cluster tests, so both judge exactly the same documents."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

TABLE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parent / "invalid_manifests.yaml").read_text()
)


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`base` with `patch` merged in, recursively; a None in the patch removes the key."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def build_case(case: dict[str, Any]) -> dict[str, Any]:
    manifest: dict[str, Any] = copy.deepcopy(TABLE["base"])
    manifest["spec"] = merge(manifest["spec"], case.get("patch", {}))
    if "metadata" in case:
        manifest["metadata"] = case["metadata"]
    return manifest
