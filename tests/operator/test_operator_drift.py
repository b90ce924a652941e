"""Ownership and drift comparison (pure), and the work queue's bookkeeping."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shoal.operator import drift
from shoal.operator.index import ObservedIndex
from shoal.operator.workqueue import WorkQueue

OURS = {
    "metadata": {
        "ownerReferences": [
            {"kind": "ModelService", "name": "web", "uid": "u1", "controller": True}
        ]
    }
}
OLD = {
    "metadata": {
        "ownerReferences": [
            {"kind": "ModelService", "name": "web", "uid": "u0", "controller": True}
        ]
    }
}
USERS: dict[str, Any] = {"metadata": {"name": "web"}}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (None, drift.Control.ABSENT),
        (OURS, drift.Control.OURS),
        (OLD, drift.Control.FOREIGN),
        (USERS, drift.Control.FOREIGN),
    ],
)
def test_control(obj: dict[str, Any] | None, expected: drift.Control) -> None:
    assert drift.control(obj, "u1") is expected


def test_describe_foreign_names_the_controller() -> None:
    assert drift.describe_foreign(OLD) == "controlled by ModelService web (uid u0)"
    assert drift.describe_foreign(USERS) == "not created by this ModelService"


DESIRED = {
    "spec": {
        "replicas": 2,
        "template": {
            "spec": {
                "containers": [
                    {"name": "model", "env": [{"name": "A", "value": "1"}], "args": ["x", "y"]}
                ]
            }
        },
    }
}


def _with(**changes: Any) -> dict[str, Any]:
    container = {
        "name": "model",
        "env": [{"name": "A", "value": "1"}],
        "args": ["x", "y"],
        "imagePullPolicy": "IfNotPresent",
    }
    container.update(changes)
    return {
        "spec": {
            "replicas": 2,
            "strategy": {},
            "template": {"spec": {"containers": [container], "hostNetwork": True}},
        }
    }


@pytest.mark.parametrize(
    ("observed", "covered"),
    [
        (_with(), True),  # server defaults and a hand-added hostNetwork are not drift
        (
            _with(env=[{"name": "FOO", "value": "bar"}, {"name": "A", "value": "1"}]),
            True,
        ),  # kubectl set env
        (_with(env=[{"name": "A", "value": "2"}]), False),  # our variable changed
        (_with(env=[]), False),  # our variable removed
        (_with(args=["x"]), False),  # a plain list must match item by item
        (_with(args=["y", "x"]), False),
        ({"spec": {"replicas": 1}}, False),
    ],
)
def test_covers(observed: dict[str, Any], covered: bool) -> None:
    assert drift.covers(observed, DESIRED) is covered


def test_omitted_empty_values_are_not_drift() -> None:
    assert drift.covers({"a": 1}, {"a": 1, "b": "", "c": [], "d": {}})
    assert not drift.covers({"a": 1}, {"a": 1, "b": False})


def test_index_keeps_the_newest_modelservice() -> None:
    index = ObservedIndex()
    new = {
        "metadata": {"namespace": "ml", "name": "web", "resourceVersion": "12"},
        "status": {"x": 2},
    }
    old = {
        "metadata": {"namespace": "ml", "name": "web", "resourceVersion": "11"},
        "status": {"x": 1},
    }
    index.put_modelservice(new)
    index.put_modelservice(old)  # a late answer must not hide a newer watch event
    assert (index.modelservice(("ml", "web")) or {})["status"] == {"x": 2}


def test_index_reads_kopf_stores() -> None:
    index = ObservedIndex()
    pods = [{"metadata": {"name": "web-1"}}, {"metadata": {"name": "web-2"}}]
    index.attach("Deployment", {("ml", "web"): [{"kind": "Deployment"}]})
    index.attach_pods({("ml", "web"): pods})
    assert index.owned("Deployment", ("ml", "web")) == {"kind": "Deployment"}
    assert index.owned("Service", ("ml", "web")) is None
    assert index.pods_of(("ml", "web")) == pods
    assert index.pods_of(("ml", "other")) == []


async def test_queue_runs_a_key_once_and_again_when_marked_meanwhile() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add("a")  # already queued: no second entry
    assert q.pending() == 1
    assert await q.get() == "a"
    q.add("a")  # marked while a worker has it: queued again when it is done
    assert q.pending() == 1
    q.done("a")
    assert q.pending() == 1
    assert await q.get() == "a"
    q.done("a")
    assert q.pending() == 0


async def test_queue_schedule_keeps_the_earliest_and_forget_cancels() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add_after("a", 3600)
    q.add_after("a", 0)  # earlier wins
    assert await asyncio.wait_for(q.get(), 5) == "a"
    q.done("a")
    q.add_after("b", 0)
    q.forget("b")
    q.add("c")
    assert await asyncio.wait_for(q.get(), 5) == "c"  # b never fires
    q.close()
