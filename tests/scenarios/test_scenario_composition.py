"""Scenario: the iris ensemble composed through handles, on the local control plane.

The operator (in-process, namespace-scoped) turns examples/iris-ensemble.yaml into three
Deployments whose pods run `shoal serve`; a `shoal gateway` process on the host discovers them
from EndpointSlices; the ensemble's replica reaches its members through that gateway
(SHOAL_GATEWAY_URL, `shoal.handle`). The answers coming back through the gateway must be the
members' answers averaged, as IrisEnsemble combines them, with the members' answers fetched from
their own pods (not retrained here: the host's BLAS may take another kernel than the pods', see
issue 12.13), and each ensemble row must have reached each member exactly once (the members' own
metrics and the gateway's per-model counters agree on that).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from e2e.cluster import Cluster
from shoal import metric_names
from shoal.operator.spec import parse_spec
from shoal.runtime.testing import shoal_command
from tests.operator.operator_harness import (
    Operator,
    install_crds,
    operator_settings,
    running_operator,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "examples" / "iris-ensemble.yaml"
MEMBERS = ("iris-logistic", "iris-forest")
ENSEMBLE = "iris"
CLASSES = ["setosa", "versicolor", "virginica"]
REPLICA_PORT = 8000
# Rows of sklearn's iris data (index: true class), and one measurement of no flower in it. On
# 70 and 106 the ensemble sides with the forest against the logistic regression, on the last
# with the logistic regression against the forest: neither member alone gives its answers.
ROWS = [
    [5.1, 3.5, 1.4, 0.2],  # 0: setosa
    [6.4, 3.2, 4.5, 1.5],  # 51: versicolor
    [7.7, 3.0, 6.1, 2.3],  # 135: virginica
    [5.9, 3.2, 4.8, 1.8],  # 70: versicolor
    [4.9, 2.5, 4.5, 1.7],  # 106: virginica
    [6.0, 2.4, 4.2, 1.7],  # logistic: versicolor 0.83, forest: virginica 0.52
]


def _members_from_pods(
    client: httpx.Client, member_ip: dict[str, str]
) -> dict[str, list[dict[str, Any]]]:
    """Each member's answers, asked of its own replica directly (not through the gateway)."""
    out = {}
    for m, ip in member_ip.items():
        out[m] = _post_v1(client, f"http://{ip}:{REPLICA_PORT}", m, ROWS)
    return out


# The ensemble averages the members' float64 probabilities exactly as _combine does; JSON carries
# them exactly (repr round-trips). Summation order is the only freedom: a few ulps anywhere.
REL, ABS = 1e-12, 1e-15


def _combine(member_answers: list[dict[str, Any]]) -> dict[str, Any]:
    """IrisEnsemble's rule: the mean of the members' probabilities, and its argmax's class."""
    probs = np.mean([a["probabilities"] for a in member_answers], axis=0)
    return {"class": CLASSES[int(probs.argmax())], "probabilities": probs.tolist()}


# -- the gateway process --------------------------------------------------------------------


@contextlib.contextmanager
def _gateway_process(
    cluster: Cluster, namespace: str, workdir: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """`shoal gateway --kubernetes` on the bridge address (pods reach the host there)."""
    port_file, log_file = workdir / "gateway.port", workdir / "gateway.log"
    cmd = [
        *shoal_command(),
        "gateway",
        "--kubernetes",
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--namespace",
        namespace,
        "--host",
        cluster.host_ip,
        "--port",
        "0",
        "--port-file",
        str(port_file),
    ]
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:

        def listening() -> str | None:
            if proc.poll() is not None:
                raise AssertionError(f"gateway exited {proc.returncode}:\n{_tail(log_file)}")
            text = port_file.read_text().strip() if port_file.exists() else ""
            return text or None

        port = cluster.wait_for(listening, 30, "the gateway's port file")
        yield f"http://{cluster.host_ip}:{port}", proc, log_file
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# -- metrics --------------------------------------------------------------------------------


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def _metrics(client: httpx.Client, url: str) -> str:
    resp = client.get(f"{url}/metrics")
    resp.raise_for_status()
    return resp.text


def _gateway_view(client: httpx.Client, gateway: str) -> dict[str, set[str]]:
    """Model -> the replicas the gateway routes to (its per-replica outstanding gauge)."""
    view: dict[str, set[str]] = {}
    text = _metrics(client, gateway)
    for labels, _ in _samples(text, metric_names.GATEWAY_OUTSTANDING_REQUESTS):
        view.setdefault(labels["model"], set()).add(labels["replica"])
    return view


def _gateway_ok(client: httpx.Client, gateway: str) -> dict[str, float]:
    """Model -> requests the gateway answered 200."""
    out: dict[str, float] = {}
    for labels, value in _samples(_metrics(client, gateway), metric_names.GATEWAY_REQUESTS_TOTAL):
        if labels["code"] == "200":
            out[labels["model"]] = out.get(labels["model"], 0.0) + value
    return out


def _replica_v1_ok(client: httpx.Client, ip: str, model: str) -> float:
    """V1 requests a replica answered 200 for `model` (its own shoal_requests_total)."""
    text = _metrics(client, f"http://{ip}:{REPLICA_PORT}")
    return sum(
        value
        for labels, value in _samples(text, metric_names.REQUESTS_TOTAL)
        if labels.get("model") == model
        and labels.get("protocol") == "v1"
        and labels.get("code") == "200"
    )


# -- cluster state --------------------------------------------------------------------------


def _serving_pod_ips(op: Operator, name: str, need_env: str | None = None) -> set[str]:
    """Ready, not terminating pods of a model (optionally only those whose container has
    `need_env` set: only pods whose container carries that variable)."""
    ips: set[str] = set()
    for pod in op.items("pods", f"serving.shoal.dev/model={name}"):
        if pod["metadata"].get("deletionTimestamp"):
            continue
        conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
        env = {e["name"] for c in pod["spec"]["containers"] for e in c.get("env") or []}
        if conds.get("Ready") == "True" and (need_env is None or need_env in env):
            ips.add(str(pod["status"]["podIP"]))
    return ips


def _post_v1(client: httpx.Client, gateway: str, model: str, rows: list[Any]) -> list[Any]:
    resp = client.post(f"{gateway}/v1/models/{model}:predict", json={"instances": rows})
    assert resp.status_code == 200, f"{model}: {resp.status_code} {resp.text}"
    predictions: list[Any] = resp.json()["predictions"]
    assert len(predictions) == len(rows)
    return predictions


# -- the scenario ---------------------------------------------------------------------------


def test_iris_ensemble_through_handles_on_the_cluster(
    k8s_cluster: Cluster,
    k8s_namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ns = k8s_namespace
    install_crds(k8s_cluster)
    monkeypatch.setenv("KUBECONFIG", str(k8s_cluster.kubeconfig))
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    assert [d["metadata"]["name"] for d in docs] == [*MEMBERS, ENSEMBLE]

    with (
        _gateway_process(k8s_cluster, ns, tmp_path) as (gateway, gw_proc, gw_log),
        # The operator hands the gateway's address to every replica (SHOAL_GATEWAY_URL).
        running_operator(k8s_cluster, ns, operator_settings(ns, gateway_url=gateway)) as op,
        httpx.Client(timeout=30) as client,
    ):
        try:
            op.kubectl("apply", "-f", str(MANIFEST))
            for name in (*MEMBERS, ENSEMBLE):
                op.wait_condition(name, "Ready", "True", timeout=150)

            # Ready as the gateway sees it: exactly the serving pods of each model (for the
            # ensemble: pods started with the gateway address the operator gave them).
            want = {name: _serving_pod_ips(op, name) for name in MEMBERS}
            want[ENSEMBLE] = k8s_cluster.wait_for(
                lambda: _serving_pod_ips(op, ENSEMBLE, need_env="SHOAL_GATEWAY_URL"),
                120,
                "a ready ensemble pod with SHOAL_GATEWAY_URL",
            )
            assert all(len(ips) == 1 for ips in want.values()), want
            keys = {m: {f"{ip}:{REPLICA_PORT}" for ip in ips} for m, ips in want.items()}

            def gateway_matches() -> bool:
                assert gw_proc.poll() is None, f"gateway exited:\n{_tail(gw_log)}"
                view = _gateway_view(client, gateway)
                return all(view.get(m) == k for m, k in keys.items())

            k8s_cluster.wait_for(gateway_matches, 60, f"the gateway routing to {keys}")

            member_ip = {m: next(iter(want[m])) for m in MEMBERS}
            members = _members_from_pods(client, member_ip)
            replica_before = {m: _replica_v1_ok(client, member_ip[m], m) for m in MEMBERS}
            gateway_before = _gateway_ok(client, gateway)

            # One V1 request with every row, then each row as its own request.
            batched = _post_v1(client, gateway, ENSEMBLE, ROWS)
            singles = [_post_v1(client, gateway, ENSEMBLE, [row])[0] for row in ROWS]

            expected = [_combine([members[m][i] for m in MEMBERS]) for i in range(len(ROWS))]
            for got in (batched, singles):
                assert [a["class"] for a in got] == [e["class"] for e in expected]
                for answer, exp in zip(got, expected, strict=True):
                    assert answer["probabilities"] == pytest.approx(
                        exp["probabilities"], rel=REL, abs=ABS
                    )
            # The rows were chosen so that each member is overruled at least once: a
            # combination, not a pass-through of either member.
            for m in MEMBERS:
                assert any(
                    e["class"] != a["class"] for e, a in zip(expected, members[m], strict=True)
                ), m

            # Every ensemble row is one call to each member, through the gateway.
            calls = 2 * len(ROWS)
            gateway_after = _gateway_ok(client, gateway)
            for m in MEMBERS:
                got_replica = _replica_v1_ok(client, member_ip[m], m) - replica_before[m]
                got_gateway = gateway_after.get(m, 0.0) - gateway_before.get(m, 0.0)
                assert (got_replica, got_gateway) == (calls, calls), m
            ensemble_requests = gateway_after[ENSEMBLE] - gateway_before.get(ENSEMBLE, 0.0)
            assert ensemble_requests == 1 + len(ROWS)

            # Through the gateway the members answer as they do directly.
            for m in MEMBERS:
                served = _post_v1(client, gateway, m, ROWS)
                assert [a["class"] for a in served] == [a["class"] for a in members[m]]
                for answer, direct in zip(served, members[m], strict=True):
                    assert answer["probabilities"] == pytest.approx(
                        direct["probabilities"], rel=REL, abs=ABS
                    )
        except BaseException:
            print(f"--- gateway log (tail)\n{_tail(gw_log)}")
            raise
        finally:
            op.kubectl("delete", "msvc", "--all", "--wait=true", "--timeout=60s", check=False)


def test_the_manifest_is_three_valid_model_services() -> None:
    """The example parses as the operator parses it, and the ensemble names its members."""
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    specs = {d["metadata"]["name"]: parse_spec(d["spec"]) for d in docs}
    assert list(specs) == [*MEMBERS, ENSEMBLE]
    assert all(d["kind"] == "ModelService" for d in docs)
    assert specs[ENSEMBLE].model.class_ == "examples.iris:IrisEnsemble"
    assert specs[ENSEMBLE].model.config == {"members": list(MEMBERS)}
