"""bench.operator_load end to end, tiny: counts 1 and 2, two edits each, a 1 s idle window, on
the session's control plane. Checks that the operator's own requests are told apart from the
others' (its identity's counter moves with each edit, the bench's own requests are not in it),
that every edit was waited on until observed and then rolled out, and that the curve's table
and verdict are there; asserts nothing about speed."""

from __future__ import annotations

import pytest

from bench import operator_cost, operator_load
from e2e.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_curve_at_one_and_two_modelservices(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    result = operator_load.run(
        k8s_cluster, [1, 2], 1.0, 2, ns=k8s_namespace, settle_s=0, curve_only=True
    )

    assert [r["modelservices"] for r in result["runs"]] == [1, 2]
    for row in result["runs"]:
        rec = row["reconcile"]
        assert (rec["edits"], rec["objects_edited"]) == (2, row["modelservices"])
        # Each edit: at least the operator's APPLY of the Deployment and its status patch.
        assert rec["by_kind_all_users"]["APPLY deployments"] >= 2
        assert rec["operator_requests_per_edit"] >= 2
        # The bench's own PATCH and WATCH per edit are every user's, never the operator's.
        everyone = sum(rec["by_kind_all_users"].values()) / rec["edits"]
        assert rec["operator_requests_per_edit"] < everyone
        assert rec["cpu_ms_per_edit"] > 0
        assert 0 <= rec["idle_share_of_cpu"] <= 1
        seen, done = rec["latency_ms"]["observed"], rec["latency_ms"]["rolled_out"]
        assert 0 < seen["p50"] <= seen["p99"]
        assert seen["p50"] <= done["p50"]
        assert seen["p99"] <= done["p99"]
        assert row["idle"]["seconds"] >= 1.0
    flat = result["flat"]
    assert flat["compared"] == [1, 2]
    for key in ("operator_requests_per_edit", "cpu_ms_per_edit"):
        assert flat[key]["verdict"] in ("met", "missed")
    assert flat["cpu_ms_per_edit_net_of_idle"]["ratio"] >= 0
    table = operator_load.table(result)
    assert table.count("\n| 1 |") == 1
    assert table.count("\n| 2 |") == 1
    assert "operator_requests_per_edit at 2 / at 1" in table
    # Every edit reached the object: the last value the bench wrote is the one stored.
    stored = k8s_cluster.get_json("msvc", "m0001", "-n", k8s_namespace)["spec"]["batching"]
    assert stored["maxBatchSize"] == 100 + 2 + 1
    # The grant the bench gave its operator identity went with its operator.
    left = k8s_cluster.kubectl("get", "clusterrolebinding", "-o", "name").stdout
    assert f"clusterrolebinding.rbac.authorization.k8s.io/{operator_cost.BINDING}" not in left
