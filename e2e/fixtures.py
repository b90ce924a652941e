"""Pytest plugin: the local cluster as fixtures (loaded by the root conftest).

- ``k8s_cluster`` (session): one cluster per test run, started only when a selected test uses it,
  torn down at session end. Binaries are built (or found in the cache) and the cluster is started
  right after collection, so that neither counts against the first test's timeout.
- ``k8s_namespace`` (function): a fresh namespace, deleted after the test.

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
from pathlib import Path

import pytest

from e2e.cluster import Cluster

_CLUSTER_FIXTURES = {"k8s_cluster", "k8s_namespace"}


class _State:
    cluster: Cluster | None = None
    error: str | None = None
    owned = False


def _wanted(session: pytest.Session) -> bool:
    return any(_CLUSTER_FIXTURES & set(getattr(i, "fixturenames", ())) for i in session.items)


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
            _State.cluster = cluster_mod.start(follow_parent=True, timeout_s=600)
            _State.owned = True
    except HarnessError as exc:
        _State.error = f"the e2e cluster could not start: {exc}"
    except Exception as exc:  # reported by every test that needs the cluster, never skipped
        _State.error = f"the e2e cluster could not start: {type(exc).__name__}: {exc}"


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if _wanted(session) and _State.cluster is None and _State.error is None:
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
