"""Turns a pod spec into what a local process needs: image mapping, environment, volumes.

Image mapping (the contract with the operator's tests): an image whose repository's last path
segment is ``shoal`` or ``python`` runs with the local installation (the harness interpreter's bin
folder first on PATH, the repo root on PYTHONPATH); any other image cannot run here.
"""

from __future__ import annotations

import base64
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.kube import Kube, Obj

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_BIN = str(Path(sys.executable).parent)
BASE_PATH = f"{LOCAL_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What `docker run IMAGE args...` would execute when a container sets args but no command.
DEFAULT_ENTRYPOINTS: dict[str, list[str]] = {"shoal": ["shoal"], "python": ["python3"]}


class ConfigError(Exception):
    """The pod refers to something that does not exist (yet); the kubelet retries."""


def image_repository_name(image: str) -> str:
    """``ghcr.io/shoal-dev/shoal:0.1.0`` -> ``shoal``; ``python:3.11-slim`` -> ``python``."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def mapped_entrypoint(image: str) -> list[str] | None:
    return DEFAULT_ENTRYPOINTS.get(image_repository_name(image))


def unmapped_message(image: str) -> str:
    return f"image {image} is not mapped to a local installation (only */shoal and */python are)"


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, `$$` escapes, others stay."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_REF.sub(repl, value)


def parse_quantity(q: str) -> float:
    suffixes = {
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
        "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3,
    }  # fmt: skip
    for suffix, factor in suffixes.items():
        if q.endswith(suffix):
            return float(q[: -len(suffix)]) * factor
    return float(q)


@dataclass
class PodFacts:
    """What the downward API can expose about a running pod."""

    pod: Obj
    pod_ip: str
    host_ip: str
    node_allocatable: dict[str, str]


def field_value(facts: PodFacts, path: str) -> str:
    meta: dict[str, Any] = facts.pod["metadata"]
    spec: dict[str, Any] = facts.pod["spec"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": facts.pod_ip,
        "status.podIPs": facts.pod_ip,
        "status.hostIP": facts.host_ip,
        "status.hostIPs": facts.host_ip,
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1], {})
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise ConfigError(f"unsupported fieldRef {path}")


def resource_value(facts: PodFacts, container: Obj, ref: Obj) -> str:
    kind, _, res = ref["resource"].partition(".")
    resources = container.get("resources", {})
    raw = resources.get(kind, {}).get(res) or resources.get("limits", {}).get(res)
    raw = raw or facts.node_allocatable.get(res, "0")
    value = parse_quantity(str(raw)) / parse_quantity(str(ref.get("divisor", "1")))
    return str(math.ceil(value))


class Resolver:
    """Reads ConfigMaps and Secrets of the pod's namespace (cached for one pod start)."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self._kube = kube
        self._ns = namespace
        self._cache: dict[tuple[str, str], Obj | None] = {}

    async def _obj(self, kind: str, name: str) -> Obj | None:
        key = (kind, name)
        if key not in self._cache:
            self._cache[key] = await self._kube.get(f"/api/v1/namespaces/{self._ns}/{kind}/{name}")
        return self._cache[key]

    async def data(self, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        """All keys of a ConfigMap (kind=configmaps) or Secret (kind=secrets) as bytes."""
        obj = await self._obj(kind, name)
        if obj is None:
            if optional:
                return None
            raise ConfigError(f'{kind[:-1]} "{name}" not found')
        out: dict[str, bytes] = {}
        if kind == "secrets":
            for k, v in (obj.get("data") or {}).items():
                out[k] = base64.b64decode(v)
        else:
            for k, v in (obj.get("data") or {}).items():
                out[k] = v.encode()
            for k, v in (obj.get("binaryData") or {}).items():
                out[k] = base64.b64decode(v)
        return out

    async def key(self, kind: str, ref: Obj) -> str | None:
        optional = bool(ref.get("optional"))
        data = await self.data(kind, ref["name"], optional)
        if data is None:
            return None
        if ref["key"] not in data:
            if optional:
                return None
            raise ConfigError(f"couldn't find key {ref['key']} in {kind[:-1]} {ref['name']}")
        return data[ref["key"]].decode(errors="replace")


async def container_env(
    resolver: Resolver, facts: PodFacts, container: Obj, service_env: dict[str, str]
) -> dict[str, str]:
    """The process environment: image env, service env, envFrom, then env (later wins)."""
    env: dict[str, str] = {
        "PATH": BASE_PATH,
        "PYTHONPATH": str(REPO_ROOT),
        "HOME": "/root",
        "HOSTNAME": facts.pod["metadata"]["name"],
    }
    env.update(service_env)
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        for kind, field in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            if field in source:
                ref = source[field]
                data = await resolver.data(kind, ref["name"], bool(ref.get("optional")))
                for k, v in (data or {}).items():
                    env[prefix + k] = v.decode(errors="replace")
    for var in container.get("env", []):
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        src = var["valueFrom"]
        value: str | None
        if "fieldRef" in src:
            value = field_value(facts, src["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in src:
            value = resource_value(facts, container, src["resourceFieldRef"])
        elif "configMapKeyRef" in src:
            value = await resolver.key("configmaps", src["configMapKeyRef"])
        elif "secretKeyRef" in src:
            value = await resolver.key("secrets", src["secretKeyRef"])
        else:
            raise ConfigError(f"unsupported valueFrom for env {name}: {sorted(src)}")
        if value is not None:
            env[name] = value
    return env


def container_argv(container: Obj, env: dict[str, str]) -> list[str]:
    entry = mapped_entrypoint(container.get("image", "")) or []
    command = container.get("command") or entry
    argv = [*command, *container.get("args", [])]
    if not argv:
        raise ConfigError(f"container {container['name']} has no command")
    return [expand(a, env) for a in argv]
