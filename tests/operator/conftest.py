"""Fixtures of the operator's cluster tests: the CRDs once per session, and an operator run
in-process for one namespace."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from operator_harness import Operator, install_crds, operator_settings, running_operator


@pytest.fixture(scope="session")
def crds(k8s_cluster: Any) -> Any:
    install_crds(k8s_cluster)
    return k8s_cluster


@pytest.fixture
def op(crds: Any, k8s_namespace: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Operator]:
    monkeypatch.setenv("KUBECONFIG", str(crds.kubeconfig))
    # The harness's GPU nodes have no devices: let the runtime pick (it finds no CUDA).
    settings = operator_settings(k8s_namespace, gpu_device="auto")
    with running_operator(crds, k8s_namespace, settings) as operator:
        yield operator
        # Delete while the operator still runs, so that it does not see its objects vanish
        # under a live ModelService and the garbage collector has taken everything before the
        # namespace goes.
        operator.kubectl("delete", "msvc", "--all", "--wait=true", "--timeout=90s")
