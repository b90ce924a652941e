"""Reconciler branches that the API server's schema keeps real clusters from reaching (a spec
the pydantic model refuses, an apply the server refuses), plus status-write economy. The API is
a recording fake; the cluster tests cover the rest against the real thing."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
import pytest

from shoal.operator.handlers import Reconciler
from shoal.operator.kube import KubeError
from shoal.operator.settings import OperatorSettings

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class FakeKube:
    def __init__(self, refuse_kind: str | None = None) -> None:
        self.refuse_kind = refuse_kind
        self.applied: list[dict[str, Any]] = []
        self.status_patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        if obj["kind"] == self.refuse_kind:
            raise KubeError(422, "Invalid", f"{obj['kind']} is invalid: spec.x: bad")
        self.applied.append(copy.deepcopy(dict(obj)))
        out = copy.deepcopy(dict(obj))
        if obj["kind"] == "Deployment":
            n = obj["spec"]["replicas"]
            out["metadata"]["generation"] = 1
            out["status"] = {
                "observedGeneration": 1,
                "replicas": n,
                "readyReplicas": n,
                "updatedReplicas": n,
                "availableReplicas": n,
            }
        return out

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        return None

    async def list(
        self, api_version: str, kind: str, namespace: str, label_selector: str
    ) -> list[dict[str, Any]]:
        return []

    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.status_patches.append(dict(patch))

    async def post_event(
        self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str, now: datetime
    ) -> None:
        self.events.append((type_, reason))

    async def close(self) -> None:
        pass


def body(
    spec: dict[str, Any], name: str = "iris", generation: int = 1, uid: str = "u1"
) -> dict[str, Any]:
    return {
        "apiVersion": "serving.shoal.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name, "namespace": "ml", "uid": uid, "generation": generation},
        "spec": spec,
    }


def reconciler(kube: FakeKube) -> Reconciler:
    return Reconciler(OperatorSettings(), clock=lambda: NOW, kube=kube)


def ready(patches: list[dict[str, Any]]) -> dict[str, Any]:
    conds = {c["type"]: c for c in patches[-1]["conditions"]}
    return dict(conds["Ready"])


async def test_invalid_spec_is_permanent_and_reported() -> None:
    kube = FakeKube()
    rec = reconciler(kube)
    bad = {"model": {"class": "a:B"}, "batching": {"maxBatchSize": 0}}
    with pytest.raises(kopf.PermanentError, match="maxBatchSize"):
        await rec.sync(body(bad))
    assert kube.applied == []
    cond = ready(kube.status_patches)
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
    assert "spec.batching.maxBatchSize" in cond["message"]
    assert ("Warning", "InvalidSpec") in kube.events


async def test_bad_name_is_permanent() -> None:
    kube = FakeKube()
    with pytest.raises(kopf.PermanentError, match="DNS-1035"):
        await reconciler(kube).sync(body({"model": {"class": "a:B"}}, name="9x"))


async def test_refused_apply_is_permanent_and_reported() -> None:
    kube = FakeKube(refuse_kind="Deployment")
    with pytest.raises(kopf.PermanentError, match="refused the Deployment"):
        await reconciler(kube).sync(body({"model": {"class": "a:B"}}))
    cond = ready(kube.status_patches)
    assert (cond["status"], cond["reason"]) == ("False", "ApplyFailed")
    assert "spec.x: bad" in cond["message"]


async def test_unchanged_status_is_not_rewritten_and_events_not_repeated() -> None:
    kube = FakeKube()
    rec = reconciler(kube)
    b = body({"model": {"class": "a:B"}, "replicas": 2})
    await rec.sync(b)
    assert len(kube.status_patches) == 1
    assert [k["kind"] for k in kube.applied] == [
        "ServiceAccount",
        "Service",
        "PodDisruptionBudget",
        "Deployment",
    ]
    assert ready(kube.status_patches)["reason"] == "AllReplicasReady"
    events = list(kube.events)
    # The watch has not echoed our status back yet: still no second write, no repeated events.
    await rec.sync(b)
    assert len(kube.status_patches) == 1
    assert kube.events == events
    assert rec.passes == 2


async def test_stale_generation_is_not_applied() -> None:
    kube = FakeKube()
    rec = reconciler(kube)
    await rec.sync(body({"model": {"class": "a:B"}, "replicas": 3}, generation=2))
    n = len(kube.applied)
    await rec.sync(body({"model": {"class": "a:B"}, "replicas": 1}, generation=1))
    assert len(kube.applied) == n


async def test_recreated_object_under_the_same_name_starts_afresh() -> None:
    kube = FakeKube()
    rec = reconciler(kube)
    await rec.sync(body({"model": {"class": "a:B"}}, generation=7, uid="old"))
    n = len(kube.applied)
    await rec.sync(body({"model": {"class": "a:B"}, "replicas": 2}, generation=1, uid="new"))
    assert len(kube.applied) == n + 4
    assert kube.applied[-1]["metadata"]["ownerReferences"][0]["uid"] == "new"
