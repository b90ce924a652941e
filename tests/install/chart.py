"""Rendering Shoal's chart with helm (built by e2e/build-binaries.sh) for the chart tests and the
journey."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from e2e import binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "shoal"

# Value sets the chart is checked with: each renders, passes the schema, dry-runs on a real API
# server and is scanned by checkov. `{ns}` is replaced by the namespace rendered into.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "local": yaml.safe_load((CHART / "values-local.yaml").read_text()),
    "namespaced": {"operator": {"scope": "namespaced", "watchNamespaces": ["{ns}"]}},
    "everything": {
        "operator": {"replicas": 3, "gpuDevice": "auto", "mlflowTrackingUri": "http://mlflow:5000"},
        "gateway": {
            "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 5},
            "auth": {"tokens": {"t0ken-for-iris": ["iris"], "t0ken-for-all": "*"}},
            "service": {"annotations": {"example.com/owner": "ml"}},
        },
        "ingress": {
            "className": "traefik",
            "host": "models.example.com",
            "annotations": {"traefik.ingress.kubernetes.io/router.entrypoints": "websecure"},
            "tls": {"secretName": "models-tls"},
        },
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
            ],
        },
        "grafanaDashboard": {"enabled": True},
    },
    "no-auth-no-ingress": {
        "gateway": {"auth": {"enabled": False}, "podDisruptionBudget": {"enabled": False}},
        "ingress": {"enabled": False},
        "operator": {"replicas": 1},
    },
}


def helm_bin() -> Path:
    return binaries.ensure() / "helm"


def _fill(value: Any, ns: str) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, ns) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ns) for v in value]
    return value.replace("{ns}", ns) if isinstance(value, str) else value


def values_file(tmp: Path, name: str, ns: str) -> Path:
    path = tmp / f"values-{name}.yaml"
    path.write_text(yaml.safe_dump(_fill(VALUE_SETS[name], ns)))
    return path


def helm(*args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [str(helm_bin()), *args], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{out.stderr}{out.stdout}")
    return out.stdout + (out.stderr if not check else "")


def template(*args: str, namespace: str = "shoal", release: str = "shoal") -> str:
    return helm("template", release, str(CHART), "--namespace", namespace, *args)


class _StrictLoader(yaml.SafeLoader):
    """Refuses a mapping with a repeated key (YAML keeps the last one silently)."""


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys = [loader.construct_object(k) for k, _ in node.value]
    repeated = {k for k in keys if keys.count(k) > 1}
    assert not repeated, f"repeated keys {repeated} at {node.start_mark}"
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(text, Loader=_StrictLoader) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]
