"""Reconcile passes against the real API server of the local control plane: one pass at a time,
driven by the test (no kopf), with the real client. The index starts empty, so every owned
object is read from the server, as right after a start before the watches report."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from operator_harness import install_crds, manifest

from shoal.operator.index import ObservedIndex
from shoal.operator.kube import Kube
from shoal.operator.reconciler import Reconciler
from shoal.operator.settings import OperatorSettings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

NOW = datetime(2026, 1, 1, tzinfo=UTC)
# An image the process kubelet does not run: pods wait (ErrImageNeverPull), nothing starts.
SPEC = {"model": {"class": "examples.adder:Adder"}, "image": "example.invalid/none:1"}


class Counting:
    """The real client, counting what the reconciler sends."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.calls: list[str] = []

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(f"apply {obj['kind']}")
        return await self.kube.apply(obj)

    async def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        self.calls.append(f"get {kind}")
        return await self.kube.get(api_version, kind, namespace, name)

    async def patch_status(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        self.calls.append("status")
        return await self.kube.patch_status(namespace, name, patch)

    async def post_event(
        self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str, now: datetime
    ) -> str:
        self.calls.append(f"event {reason}")
        return await self.kube.post_event(
            involved, type_=type_, reason=reason, message=message, now=now
        )

    async def repeat_event(self, namespace: str, name: str, count: int, now: datetime) -> None:
        self.calls.append("event repeat")
        await self.kube.repeat_event(namespace, name, count, now)

    async def close(self) -> None:
        await self.kube.close()


@pytest.fixture(scope="module")
def crds(k8s_cluster: Any) -> Any:
    install_crds(k8s_cluster)
    return k8s_cluster


@pytest.fixture
async def kube(crds: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Counting]:
    monkeypatch.setenv("KUBECONFIG", str(crds.kubeconfig))
    client = Counting(await Kube.connect())
    yield client
    await client.close()


class Passes:
    """A reconciler whose index the test feeds from the API server before each pass."""

    def __init__(self, cluster: Any, namespace: str, kube: Counting) -> None:
        self.cluster, self.namespace, self.kube = cluster, namespace, kube
        self.rec = Reconciler(OperatorSettings(), clock=lambda: NOW, kube=kube)
        self.rec.index = ObservedIndex()

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return self.cluster.kubectl("-n", self.namespace, *args, input=input, check=check)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        proc = self.kubectl("get", kind, name, "-o", "json", check=False)
        if proc.returncode != 0:
            return None
        obj: dict[str, Any] = json.loads(proc.stdout)
        return obj

    async def sync(self, name: str) -> dict[str, Any]:
        """Feed the ModelService as it is now, run one pass, return its status."""
        body = self.get("msvc", name)
        assert body is not None
        self.rec.index.drop_modelservice((self.namespace, name))
        self.rec.index.put_modelservice(body)
        await self.rec.sync((self.namespace, name))
        after = self.get("msvc", name) or {}
        status: dict[str, Any] = after.get("status") or {}
        return status


def ready(status: Mapping[str, Any]) -> dict[str, Any]:
    by_type: dict[str, dict[str, Any]] = {c["type"]: c for c in status.get("conditions") or []}
    return by_type["Ready"]


@pytest.fixture
def passes(crds: Any, k8s_namespace: str, kube: Counting) -> Passes:
    return Passes(crds, k8s_namespace, kube)


async def test_unchanged_status_is_not_rewritten_and_nothing_reapplied(passes: Passes) -> None:
    passes.kubectl(
        "apply", "-f", "-", input=yaml.safe_dump(manifest("web", {**SPEC, "replicas": 0}))
    )
    await passes.sync("web")
    kinds = [c for c in passes.kube.calls if c.startswith("apply")]
    assert kinds == [
        "apply ServiceAccount",
        "apply Service",
        "apply PodDisruptionBudget",
        "apply Deployment",
    ]

    def settled() -> bool:
        dep = passes.get("deployment", "web") or {}
        observed = dep.get("status", {}).get("observedGeneration")
        return bool(observed == dep["metadata"]["generation"])

    passes.cluster.wait_for(settled, 60, "the Deployment controller caught up")
    assert ready(await passes.sync("web"))["reason"] == "ScaledToZero"
    dep_version = (passes.get("deployment", "web") or {})["metadata"]["resourceVersion"]
    passes.kube.calls.clear()
    # Nothing changed since: the next pass reads, compares and writes nothing.
    await passes.sync("web")
    assert [c for c in passes.kube.calls if not c.startswith("get")] == []
    assert (passes.get("deployment", "web") or {})["metadata"]["resourceVersion"] == dep_version


async def test_stale_generation_is_not_applied(passes: Passes) -> None:
    passes.kubectl(
        "apply", "-f", "-", input=yaml.safe_dump(manifest("web", {**SPEC, "replicas": 2}))
    )
    stale = passes.get("msvc", "web")
    assert stale is not None
    passes.kubectl("patch", "msvc", "web", "--type=merge", "-p", '{"spec":{"replicas":0}}')
    await passes.sync("web")
    assert (passes.get("deployment", "web") or {})["spec"]["replicas"] == 0
    passes.kube.calls.clear()
    # A pass handed the older body (generation 1) must not roll the Deployment back.
    passes.rec.index.drop_modelservice((passes.namespace, "web"))
    passes.rec.index.put_modelservice(stale)
    await passes.rec.sync((passes.namespace, "web"))
    assert not [c for c in passes.kube.calls if c.startswith("apply")]
    assert (passes.get("deployment", "web") or {})["spec"]["replicas"] == 0


async def test_recreated_object_under_the_same_name_starts_afresh(passes: Passes) -> None:
    passes.kubectl(
        "apply", "-f", "-", input=yaml.safe_dump(manifest("web", {**SPEC, "replicas": 0}))
    )
    await passes.sync("web")
    old_uid = (passes.get("msvc", "web") or {})["metadata"]["uid"]
    passes.kubectl("delete", "msvc", "web", "--wait=true")
    passes.kubectl(
        "apply", "-f", "-", input=yaml.safe_dump(manifest("web", {**SPEC, "replicas": 0}))
    )
    new_uid = (passes.get("msvc", "web") or {})["metadata"]["uid"]
    assert new_uid != old_uid
    status = await passes.sync("web")
    if ready(status)["reason"] == "ResourceConflict":  # the collector has not caught up yet
        assert old_uid in ready(status)["message"]

    async def owned_by_new() -> bool:
        await passes.sync("web")
        dep = passes.get("deployment", "web") or {}
        refs = dep.get("metadata", {}).get("ownerReferences") or [{}]
        return bool(refs[0].get("uid") == new_uid)

    end = time.monotonic() + 60
    while not await owned_by_new():
        assert time.monotonic() < end, "the old Deployment was never collected"
        await asyncio.sleep(0.25)  # poll interval of a wait with a deadline
    assert ready(await passes.sync("web"))["reason"] == "ScaledToZero"


async def test_a_users_objects_of_the_same_name_are_never_taken_over(passes: Passes) -> None:
    passes.kubectl("create", "deployment", "web", "--image=python:3.11", "--replicas=0")
    passes.kubectl("create", "service", "clusterip", "web", "--tcp=80:8080")
    svc_before = passes.get("service", "web")
    dep_before = passes.get("deployment", "web")
    assert svc_before is not None
    assert dep_before is not None
    passes.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest("web", SPEC)))
    status = await passes.sync("web")
    cond = ready(status)
    assert (cond["status"], cond["reason"]) == ("False", "ResourceConflict")
    assert f"Service {passes.namespace}/web" in cond["message"]
    assert f"Deployment {passes.namespace}/web" in cond["message"]
    assert not [c for c in passes.kube.calls if c.startswith("apply")]
    for kind, before in (("service", svc_before), ("deployment", dep_before)):
        now = passes.get(kind, "web") or {}
        assert now["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], kind
        assert "ownerReferences" not in now["metadata"], kind
    # Deleting the ModelService leaves them alone (nothing of theirs points at it).
    passes.kubectl("delete", "msvc", "web", "--wait=true")
    assert passes.get("service", "web") is not None
    assert passes.get("deployment", "web") is not None


async def test_status_edited_by_someone_else_heals(passes: Passes) -> None:
    passes.kubectl(
        "apply", "-f", "-", input=yaml.safe_dump(manifest("web", {**SPEC, "replicas": 0}))
    )
    good = await passes.sync("web")
    assert good["url"] == f"http://web.{passes.namespace}.svc.cluster.local"
    passes.kubectl(
        "patch", "msvc", "web", "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"conditions": None, "url": "http://wrong"}}),
    )  # fmt: skip
    healed = await passes.sync("web")
    assert healed["url"] == good["url"]
    assert ready(healed)["reason"] == "ScaledToZero"


async def test_a_deployment_the_server_refuses_is_reported(passes: Passes) -> None:
    # `In` without values passes the schema; the Deployment's validation refuses it.
    terms = [{"matchExpressions": [{"key": "a", "operator": "In"}]}]
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
        }
    }
    spec = {**SPEC, "scheduling": {"affinity": affinity}}
    passes.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest("web", spec)))
    cond = ready(await passes.sync("web"))
    assert (cond["status"], cond["reason"]) == ("False", "ApplyFailed")
    assert "refused the Deployment" in cond["message"]
    assert "values" in cond["message"]
