"""The operator's cost at scale: API requests/s and operator CPU for N idle ModelServices, the
cost of one reconcile at each N (the curve), and how fast drift of an owned object is repaired.

    .venv/bin/python -m bench.operator_load --counts 1,50,200 --window 60 --edits 20
    .venv/bin/python -m bench.operator_load --code-root /tmp/shoal-before   # another checkout

Starts a local control plane (e2e/), installs the CRDs, measures the API server's own
`apiserver_request_total` (from /metrics) over an idle window without the operator (baseline:
kubelet leases, controllers), then runs `shoal operator -n NS --standalone` from `--code-root`
as a process under its own identity (bench/operator_cost.py: the API server then counts its
requests apart) and, for each count, creates ModelServices up to that count (replicas 0: no
pods, so only the operator's own work is measured), waits until every one reports Ready, and
measures requests/s above the baseline and the operator's CPU seconds per minute over the
window. Then, at that count, K spec edits one after another, each waited on (a watch) until the
operator's status shows its generation observed: the operator's requests and CPU per edit and
the edit -> observed latency. Last (unless --curve-only) 50 edits at once and the repair of
deleted or edited owned objects. Prints one JSON document on stdout and a table on stderr.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from bench.operator_cost import (
    BINDING,
    admin_client,
    cpu_seconds,
    flatness,
    operator_kubeconfig,
    reconcile_cost,
    scrape,
)
from e2e import cluster as cluster_mod
from e2e.layout import Slot

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "load"
SPEC = {"model": {"class": "examples.adder:Adder"}, "replicas": 0}
Cluster = cluster_mod.Cluster


def window(c: Cluster, seconds: float, pid: int | None) -> dict[str, Any]:
    (before, op0), cpu0, t0 = scrape(c), cpu_seconds(pid) if pid else 0.0, time.monotonic()
    time.sleep(seconds)  # the measurement window itself
    (after, op1), cpu1, t1 = scrape(c), cpu_seconds(pid) if pid else 0.0, time.monotonic()
    delta = after - before
    span = t1 - t0
    return {
        "seconds": round(span, 1),
        "requests_per_s": round(sum(delta.values()) / span, 2),
        # The scrape itself is a non-resource request: the operator's own count is exact.
        "operator_requests_per_s": round((op1 - op0) / span, 3),
        "by_kind": {k: round(v / span, 2) for k, v in delta.most_common(12)},
        "cpu_s_per_min": round((cpu1 - cpu0) / span * 60, 2),
    }


def manifests(ns: str, start: int, stop: int) -> str:
    docs = [
        {
            "apiVersion": "serving.shoal.dev/v1alpha1",
            "kind": "ModelService",
            "metadata": {"name": f"m{i:04d}", "namespace": ns},
            "spec": SPEC,
        }
        for i in range(start, stop)
    ]
    return yaml.safe_dump_all(docs)


def ready_count(c: Cluster, ns: str) -> int:
    """ModelServices that are Ready and whose rollout is complete: the Deployment controller
    has caught up too, so what follows is the idle state, not creation's tail."""
    items = c.get_json("msvc", "-n", ns)["items"]
    n = 0
    for m in items:
        conds = {x["type"]: x for x in (m.get("status") or {}).get("conditions") or []}
        ready = conds.get("Ready", {}).get("status") == "True"
        n += ready and conds.get("Progressing", {}).get("reason") == "RolloutComplete"
    return n


def repair_seconds(c: Cluster, ns: str, kind: str, name: str, edit: str | None) -> float:
    """Delete (or edit) one owned object and time until the operator has put it back."""
    old = c.get_json(kind, name, "-n", ns)
    t0 = time.monotonic()
    if edit is None:
        c.kubectl("delete", kind, name, "-n", ns, "--wait=false")

        def repaired() -> bool:
            proc = c.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
            return (
                proc.returncode == 0
                and json.loads(proc.stdout)["metadata"]["uid"] != (old["metadata"]["uid"])
            )
    else:
        c.kubectl("patch", kind, name, "-n", ns, "--type=merge", "-p", edit)

        def repaired() -> bool:
            now = c.get_json(kind, name, "-n", ns)
            return bool(now["spec"] == old["spec"])

    c.wait_for(repaired, 120, f"{kind}/{name} repaired", interval=0.1)
    return round(time.monotonic() - t0, 2)


def change_cost(c: Cluster, ns: str, n: int) -> dict[str, Any]:
    """Edit the spec of `n` ModelServices at once and count the requests until each is caught
    up (every user's: kubectl's GET+PATCH and the controllers' are in it)."""
    (before, op0), t0 = scrape(c), time.monotonic()
    patch = json.dumps({"spec": {"batching": {"maxBatchSize": 16}}})
    for i in range(n):
        c.kubectl("patch", "msvc", f"m{i:04d}", "-n", ns, "--type=merge", "-p", patch)

    def caught_up() -> bool:
        items = c.get_json("msvc", "-n", ns)["items"]
        edited = [m for m in items if (m["spec"].get("batching") or {}).get("maxBatchSize") == 16]
        return len(edited) >= n and all(
            (m.get("status") or {}).get("observedGeneration") == m["metadata"]["generation"]
            for m in edited
        )

    c.wait_for(caught_up, 300, f"{n} edits reconciled", 1.0)
    span = time.monotonic() - t0
    after, op1 = scrape(c)
    delta = after - before
    return {
        "edits": n,
        "seconds": round(span, 1),
        "requests_per_edit": round(sum(delta.values()) / n, 1),
        "operator_requests_per_edit": round((op1 - op0) / n, 1),
        "by_kind": dict(delta.most_common(8)),
    }


@contextmanager
def running_operator(c: Cluster, ns: str, code_root: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`shoal operator -n NS --standalone` from `code_root`, as OPERATOR_USER."""
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        kubeconfig = operator_kubeconfig(c, code_root, Path(tmp))
        env = {
            **c.env,
            "KUBECONFIG": str(kubeconfig),
            "PYTHONPATH": str(code_root),
            "SHOAL_OPERATOR_GPU_DEVICE": "auto",
        }
        with (c.log_dir / f"bench-operator-{ns}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "shoal.operator", "-n", ns, "--standalone",
                 "--liveness", ""],
                env=env, cwd=code_root, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                yield proc
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                # The cluster may be a shared one (follow_parent): leave no grant behind.
                c.kubectl("delete", "clusterrolebinding", BINDING, "--ignore-not-found")


def run(
    c: Cluster,
    counts: list[int],
    window_s: float,
    edits: int,
    *,
    ns: str = NAMESPACE,
    code_root: Path = ROOT,
    settle_s: float = 10.0,
    curve_only: bool = False,
) -> dict[str, Any]:
    """The whole measurement on a running cluster, in namespace `ns` (created when missing)."""
    crds = code_root / "crds"
    files = [crds / "modelservices.serving.shoal.dev.yaml", crds / "kopf-peering.yaml"]
    c.kubectl("apply", "--server-side", "--force-conflicts", *(f"-f={f}" for f in files))
    if c.kubectl("get", "namespace", ns, check=False).returncode != 0:
        c.kubectl("create", "namespace", ns)
    result: dict[str, Any] = {"code_root": str(code_root), "namespace": ns, "runs": []}
    result["baseline"] = window(c, window_s, None)
    with running_operator(c, ns, code_root) as proc, admin_client(c) as api:
        made, value = 0, 100
        for n in counts:
            t0 = time.monotonic()
            for start in range(made, n, 25):
                batch = manifests(ns, start, min(start + 25, n))
                c.kubectl("apply", "-f", "-", input=batch, timeout=300)
            made = n

            def all_ready(n: int = n) -> bool:
                return ready_count(c, ns) >= n

            c.wait_for(all_ready, 900, f"{n} ModelServices Ready", 2.0)
            settle = time.monotonic() - t0
            time.sleep(settle_s)  # let creation's tail (events, status echoes) pass first
            idle = window(c, window_s, proc.pid)
            idle["above_baseline_per_s"] = round(
                idle["requests_per_s"] - result["baseline"]["requests_per_s"], 2
            )
            cpu_per_s = idle["cpu_s_per_min"] / 60
            cost = reconcile_cost(c, api, ns, n, edits, value, proc.pid, cpu_per_s)
            value += edits
            row = {"modelservices": n, "all_ready_s": round(settle, 1), "idle": idle}
            row["reconcile"] = cost
            result["runs"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        if len(counts) > 1:
            result["flat"] = flatness(result["runs"])
        if not curve_only:
            result["change"] = change_cost(c, ns, min(50, made))
            result["repair_s"] = {
                "service deleted": repair_seconds(c, ns, "service", "m0001", None),
                "pdb deleted": repair_seconds(c, ns, "pdb", "m0002", None),
                "serviceaccount deleted": repair_seconds(c, ns, "serviceaccount", "m0003", None),
                "service selector edited": repair_seconds(
                    c,
                    ns,
                    "service",
                    "m0004",
                    '{"spec":{"selector":{"serving.shoal.dev/model":"x"}}}',
                ),
                "deployment edited": repair_seconds(
                    c, ns, "deployment", "m0005", '{"spec":{"revisionHistoryLimit":7}}'
                ),
            }
    return result


def table(result: dict[str, Any]) -> str:
    """The curve as markdown, for bench/RESULTS.md."""
    lines = [
        "| ModelServices | idle req/s above baseline | idle operator req/s | idle CPU-s/min "
        "| operator req/edit | CPU ms/edit (net of idle) | edit -> observed p50 / p99 ms "
        "| edit -> rolled out p50 / p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["runs"]:
        idle, rec = r["idle"], r["reconcile"]
        seen, done = rec["latency_ms"]["observed"], rec["latency_ms"]["rolled_out"]
        lines.append(
            f"| {r['modelservices']} | {idle['above_baseline_per_s']} "
            f"| {idle['operator_requests_per_s']} | {idle['cpu_s_per_min']} "
            f"| {rec['operator_requests_per_edit']} "
            f"| {rec['cpu_ms_per_edit']} ({rec['cpu_ms_per_edit_net_of_idle']}) "
            f"| {seen['p50']} / {seen['p99']} | {done['p50']} / {done['p99']} |"
        )
    flat = result.get("flat")
    if flat:
        a, b = flat["compared"]
        net = flat["cpu_ms_per_edit_net_of_idle"]["ratio"]
        for key in ("operator_requests_per_edit", "cpu_ms_per_edit"):
            v = flat[key]
            aside = f" (net of idle: {net})" if key == "cpu_ms_per_edit" else ""
            lines.append(
                f"\n{key} at {b} / at {a}: {v['ratio']}{aside} (goal {v['goal']}): {v['verdict']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,50,200")
    parser.add_argument("--window", type=float, default=60.0, help="idle window, seconds")
    parser.add_argument("--edits", type=int, default=20, help="spec edits per count")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before each window")
    parser.add_argument("--curve-only", action="store_true", help="skip the burst and repairs")
    parser.add_argument("--code-root", type=Path, default=ROOT, help="checkout whose operator runs")
    args = parser.parse_args(argv)
    counts = sorted(int(x) for x in args.counts.split(","))
    if args.edits < 1 or counts[0] < 1 or (not args.curve_only and counts[-1] < 6):
        parser.error("--edits and every count must be >= 1, the largest >= 6 without --curve-only")
    c = cluster_mod.start(follow_parent=True, timeout_s=600)
    try:
        result = run(
            c, counts, args.window, args.edits, code_root=args.code_root,
            settle_s=args.settle, curve_only=args.curve_only,
        )  # fmt: skip
    finally:
        cluster_mod.stop(Slot(c.slot), c.pid)
    print(json.dumps(result, indent=2))
    print(table(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
