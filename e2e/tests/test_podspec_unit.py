"""Pure parts of the process kubelet: image mapping, $(VAR) expansion, env resolution, argv."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from e2e.kubelet import podspec
from e2e.kubelet.podspec import ConfigError, PodFacts


@pytest.mark.parametrize(
    ("image", "name", "mapped"),
    [
        ("ghcr.io/shoal-dev/shoal:0.1.0", "shoal", True),
        ("shoal", "shoal", True),
        ("python:3.11-slim", "python", True),
        ("docker.io/library/python@sha256:abc", "python", True),
        ("localhost:5000/team/shoal:dev", "shoal", True),
        ("nginx:1.27", "nginx", False),
        ("ghcr.io/shoal-dev/shoal-gateway:0.1.0", "shoal-gateway", False),
    ],
)
def test_image_mapping(image: str, name: str, mapped: bool) -> None:
    assert podspec.image_repository_name(image) == name
    assert (podspec.mapped_entrypoint(image) is not None) is mapped


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert podspec.expand("$(A)-$(B)", env) == "1-two"
    assert podspec.expand("$(MISSING)", env) == "$(MISSING)"
    assert podspec.expand("$$(A)", env) == "$(A)"


class FakeResolver(podspec.Resolver):
    def __init__(self, objects: dict[tuple[str, str], dict[str, bytes]]) -> None:
        self.objects = objects

    async def data(self, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        if (kind, name) in self.objects:
            return self.objects[(kind, name)]
        if optional:
            return None
        raise ConfigError(f"{kind} {name} not found")


def _facts() -> PodFacts:
    pod: dict[str, Any] = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "x"}},
        "spec": {"nodeName": "cpu-0", "serviceAccountName": "default"},
    }
    return PodFacts(pod, "10.244.1.2", "10.244.0.1", {"cpu": "16", "memory": "64Gi"})


def test_env_resolution_order_and_sources() -> None:
    resolver = FakeResolver(
        {("configmaps", "cm"): {"k": b"v", "X": b"from-cm"}, ("secrets", "s"): {"pw": b"hunter2"}}
    )
    container = {
        "name": "c",
        "image": "python:3.11",
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        "env": [
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
            {"name": "URL", "value": "http://$(IP):8080"},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {
                "name": "OPT",
                "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": True}},
            },
        ],
    }
    service = {"KUBERNETES_SERVICE_HOST": "10.244.0.1"}
    env = asyncio.run(podspec.container_env(resolver, _facts(), container, service))
    assert env["CM_k"] == "v"
    assert env["IP"] == "10.244.1.2"
    assert env["APP"] == "x"
    assert env["PW"] == "hunter2"
    assert env["URL"] == "http://10.244.1.2:8080"
    assert env["CPU"] == "16"
    assert "OPT" not in env
    assert env["KUBERNETES_SERVICE_HOST"] == "10.244.0.1"
    assert env["PATH"].startswith(podspec.LOCAL_BIN + ":")
    assert env["PYTHONPATH"] == str(podspec.REPO_ROOT)


def test_missing_config_map_is_a_config_error() -> None:
    container = {
        "name": "c",
        "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}}],
    }
    with pytest.raises(ConfigError, match="gone"):
        asyncio.run(podspec.container_env(FakeResolver({}), _facts(), container, {}))


def test_argv_uses_the_image_entrypoint_when_only_args_are_given() -> None:
    env = {"PORT": "9000"}
    shoal = {"name": "c", "image": "ghcr.io/shoal-dev/shoal:1", "args": ["serve", "--port=$(PORT)"]}
    assert podspec.container_argv(shoal, env) == ["shoal", "serve", "--port=9000"]
    py = {"name": "c", "image": "python:3.11", "command": ["python", "-m", "x"], "args": ["a"]}
    assert podspec.container_argv(py, env) == ["python", "-m", "x", "a"]
