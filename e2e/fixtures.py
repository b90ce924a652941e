"""Pytest plugin: the local cluster as fixtures (loaded by the root conftest).

- ``k8s_cluster`` (session): one cluster per test run, started only when a selected test uses it,
  torn down at session end. Binaries are built (or found in the cache) and the cluster is started
  right after collection, so that neither counts against the first test's timeout.
- ``k8s_namespace`` (function): a fresh namespace, deleted after the test.
- ``k8s_real_nodes`` (session): the real nodes (real kubelet + containerd + runc) of the
  cluster; a session that selects a test using it starts the cluster with real nodes (building
  the kubelet and the images first, cached); other sessions pay nothing for them.

Set ``SHOAL_E2E_RUN_DIR`` to a slot's run dir (e.g. ``/tmp/shoal-e2e/slot-0``) to use a cluster
started by ``python -m e2e.cluster up`` instead (it is left running). Missing prerequisites (Go,
root, ``ip``) make the tests FAIL with a message; they are never skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from e2e.cluster import Cluster
from e2e.realnode.config import pod_node_selector, pod_toleration

_REAL_FIXTURE = "k8s_real_nodes"
_CLUSTER_FIXTURES = {"k8s_cluster", "k8s_namespace", _REAL_FIXTURE}


class _State:
    cluster: Cluster | None = None
    error: str | None = None
    owned = False
    real = False


def _wanted(session: pytest.Session, fixtures: set[str]) -> bool:
    return any(fixtures & set(getattr(i, "fixturenames", ())) for i in session.items)


def _start() -> None:
    from e2e import cluster as cluster_mod
    from e2e.network import HarnessError

    run_dir = os.environ.get("SHOAL_E2E_RUN_DIR")
    try:
        if run_dir:
            ready = Path(run_dir) / "ready.json"
            if not ready.exists():
                raise HarnessError(f"SHOAL_E2E_RUN_DIR={run_dir}: no running cluster there")
            _State.cluster = Cluster.from_info(json.loads(ready.read_text()))
        else:
            _State.cluster = cluster_mod.start(
                follow_parent=True, timeout_s=600, real_nodes=_State.real
            )
            _State.owned = True
    except HarnessError as exc:
        _State.error = f"the e2e cluster could not start: {exc}"
    except Exception as exc:  # reported by every test that needs the cluster, never skipped
        _State.error = f"the e2e cluster could not start: {type(exc).__name__}: {exc}"


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    _State.real = _wanted(session, {_REAL_FIXTURE})
    if _wanted(session, _CLUSTER_FIXTURES) and _State.cluster is None and _State.error is None:
        # Uncaptured, so that a first build's progress (minutes) shows on the terminal.
        capman = session.config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            _start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _State.cluster is not None and _State.owned:
        from e2e import cluster as cluster_mod
        from e2e.layout import Slot

        cluster_mod.stop(Slot(_State.cluster.slot), pid=_State.cluster.pid)
        _State.cluster = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failed test that used k8s_namespace, attach the namespace's pods and events (and
    the tail of each container log) to the report."""
    report = yield
    funcargs = getattr(item, "funcargs", {})
    ns = funcargs.get("k8s_namespace")
    if report.when == "call" and report.failed and ns and _State.cluster is not None:
        with contextlib.suppress(Exception):
            report.sections.append(("k8s namespace " + ns, _diagnostics(_State.cluster, ns)))
    return report


def _diagnostics(cluster: Cluster, ns: str) -> str:
    out = [cluster.kubectl("get", "all,endpointslices", "-n", ns, "-o", "wide", check=False).stdout]
    out.append(
        cluster.kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False).stdout
    )
    for pod in cluster.get_json("pods", "-n", ns)["items"]:
        for c in pod["spec"]["containers"]:
            tail = cluster.pod_log(ns, pod["metadata"]["name"], c["name"])[-1500:]
            out.append(f"--- log {pod['metadata']['name']}/{c['name']} (tail)\n{tail}")
    return "\n".join(out)


@pytest.fixture(scope="session")
def k8s_cluster() -> Cluster:
    if _State.cluster is None and _State.error is None:
        _start()  # used outside a normal collection (e.g. requested dynamically)
    if _State.cluster is None:
        pytest.fail(_State.error or "the e2e cluster is not running", pytrace=False)
    return _State.cluster


@pytest.fixture
def k8s_namespace(k8s_cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    k8s_cluster.kubectl("create", "namespace", name)
    k8s_cluster.wait_for(
        lambda: (
            k8s_cluster.kubectl(
                "get", "serviceaccount", "default", "-n", name, check=False
            ).returncode
            == 0
        ),
        30,
        f"default ServiceAccount in namespace {name}",
    )
    yield name
    k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@dataclass(frozen=True)
class RealNodes:
    """The cluster's real nodes and how a pod asks for one."""

    nodes: list[str]
    gpu_nodes: list[str]
    image: str
    """The runtime image every real node has imported (also tagged as the operator's default)."""
    toleration: dict[str, str] = field(default_factory=pod_toleration)
    node_selector: dict[str, str] = field(default_factory=pod_node_selector)


@pytest.fixture(scope="session")
def k8s_real_nodes(k8s_cluster: Cluster) -> RealNodes:
    info = k8s_cluster.real_nodes
    if info is None:
        pytest.fail(
            "the e2e cluster runs no real nodes (a cluster given by SHOAL_E2E_RUN_DIR must be "
            "started with `python -m e2e.cluster up`, without --no-real-nodes)",
            pytrace=False,
        )
    if "error" in info:
        pytest.fail(f"the real nodes could not start: {info['error']}", pytrace=False)
    return RealNodes(list(info["nodes"]), list(info["gpu_nodes"]), str(info["image"]))
