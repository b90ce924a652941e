"""The operator's cost at scale: API requests/s and operator CPU for N idle ModelServices, and
how fast drift of an owned object is repaired.

    .venv/bin/python -m bench.operator_load --counts 50,200,500 --window 60
    .venv/bin/python -m bench.operator_load --code-root /tmp/shoal-before   # another checkout

Starts a local control plane (e2e/), installs the CRDs, measures the API server's own
`apiserver_request_total` (from /metrics) over an idle window without the operator (baseline:
kubelet leases, controllers), then runs `shoal operator -n NS --standalone` from `--code-root`
as a process and, for each count, creates ModelServices up to that count (replicas 0: no pods,
so only the operator's own work is measured), waits until every one reports Ready, and measures
requests/s above the baseline and the operator's CPU seconds per minute over the window. Then it
deletes or edits one owned object of each kind and times the repair. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from e2e import cluster as cluster_mod
from e2e.layout import Slot

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "load"
SPEC = {"model": {"class": "examples.adder:Adder"}, "replicas": 0}


def request_counts(c: cluster_mod.Cluster) -> Counter[str]:
    """apiserver_request_total by `VERB resource[/subresource]` (resource requests only)."""
    out: Counter[str] = Counter()
    for line in c.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, _, value = line.rpartition(" ")
        labels = dict(
            part.split("=", 1)
            for part in labels_text[len("apiserver_request_total{") : -1].split(",")
        )
        resource = labels.get("resource", '""').strip('"')
        if not resource:
            continue
        sub = labels.get("subresource", '""').strip('"')
        out[f"{labels['verb'].strip(chr(34))} {resource}{'/' + sub if sub else ''}"] += int(
            float(value)
        )
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def window(c: cluster_mod.Cluster, seconds: float, pid: int | None) -> dict[str, Any]:
    before, cpu0, t0 = request_counts(c), cpu_seconds(pid) if pid else 0.0, time.monotonic()
    time.sleep(seconds)  # the measurement window itself
    after, cpu1, t1 = request_counts(c), cpu_seconds(pid) if pid else 0.0, time.monotonic()
    delta = after - before
    span = t1 - t0
    return {
        "seconds": round(span, 1),
        "requests_per_s": round(sum(delta.values()) / span, 2),
        "by_kind": {k: round(v / span, 2) for k, v in delta.most_common(12)},
        "cpu_s_per_min": round((cpu1 - cpu0) / span * 60, 2),
    }


def manifests(start: int, stop: int) -> str:
    docs = [
        {
            "apiVersion": "serving.shoal.dev/v1alpha1",
            "kind": "ModelService",
            "metadata": {"name": f"m{i:04d}", "namespace": NAMESPACE},
            "spec": SPEC,
        }
        for i in range(start, stop)
    ]
    return yaml.safe_dump_all(docs)


def ready_count(c: cluster_mod.Cluster) -> int:
    """ModelServices that are Ready and whose rollout is complete: the Deployment controller
    has caught up too, so what follows is the idle state, not creation's tail."""
    items = c.get_json("msvc", "-n", NAMESPACE)["items"]
    n = 0
    for m in items:
        conds = {x["type"]: x for x in (m.get("status") or {}).get("conditions") or []}
        ready = conds.get("Ready", {}).get("status") == "True"
        n += ready and conds.get("Progressing", {}).get("reason") == "RolloutComplete"
    return n


def repair_seconds(c: cluster_mod.Cluster, kind: str, name: str, edit: list[str] | None) -> float:
    """Delete (or edit) one owned object and time until the operator has put it back."""
    old = c.get_json(kind, name, "-n", NAMESPACE)
    t0 = time.monotonic()
    if edit is None:
        c.kubectl("delete", kind, name, "-n", NAMESPACE, "--wait=false")

        def repaired() -> bool:
            proc = c.kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json", check=False)
            return (
                proc.returncode == 0
                and json.loads(proc.stdout)["metadata"]["uid"] != (old["metadata"]["uid"])
            )
    else:
        c.kubectl("patch", kind, name, "-n", NAMESPACE, "--type=merge", "-p", edit[0])

        def repaired() -> bool:
            now = c.get_json(kind, name, "-n", NAMESPACE)
            return bool(now["spec"] == old["spec"])

    c.wait_for(repaired, 120, f"{kind}/{name} repaired", interval=0.1)
    return round(time.monotonic() - t0, 2)


def change_cost(c: cluster_mod.Cluster, n: int) -> dict[str, Any]:
    """Edit the spec of `n` ModelServices and count the requests until each is caught up."""
    before, t0 = request_counts(c), time.monotonic()
    patch = json.dumps({"spec": {"batching": {"maxBatchSize": 16}}})
    for i in range(n):
        c.kubectl("patch", "msvc", f"m{i:04d}", "-n", NAMESPACE, "--type=merge", "-p", patch)

    def caught_up() -> bool:
        items = c.get_json("msvc", "-n", NAMESPACE)["items"]
        edited = [m for m in items if m["spec"].get("batching")]
        return len(edited) >= n and all(
            (m.get("status") or {}).get("observedGeneration") == m["metadata"]["generation"]
            for m in edited
        )

    c.wait_for(caught_up, 300, f"{n} edits reconciled", 1.0)
    span = time.monotonic() - t0
    delta = request_counts(c) - before
    return {
        "edits": n,
        "seconds": round(span, 1),
        "requests_per_edit": round(sum(delta.values()) / n, 1),
        "by_kind": dict(delta.most_common(8)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="50,200,500")
    parser.add_argument("--window", type=float, default=60.0, help="idle window, seconds")
    parser.add_argument("--code-root", type=Path, default=ROOT, help="checkout whose operator runs")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.counts.split(",")]
    c = cluster_mod.start(follow_parent=True, timeout_s=600)
    result: dict[str, Any] = {"code_root": str(args.code_root), "runs": []}
    proc: subprocess.Popen[bytes] | None = None
    try:
        crds = args.code_root / "crds"
        files = [crds / "modelservices.serving.shoal.dev.yaml", crds / "kopf-peering.yaml"]
        c.kubectl("apply", "--server-side", "--force-conflicts", *(f"-f={f}" for f in files))
        c.kubectl("create", "namespace", NAMESPACE)
        result["baseline"] = window(c, args.window, None)
        env = {**c.env, "PYTHONPATH": str(args.code_root), "SHOAL_OPERATOR_GPU_DEVICE": "auto"}
        log = (c.log_dir / "bench-operator.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "shoal.operator", "-n", NAMESPACE, "--standalone",
             "--liveness", ""],
            env=env, cwd=args.code_root, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        made = 0
        for n in counts:
            t0 = time.monotonic()
            for start in range(made, n, 25):
                batch = manifests(start, min(start + 25, n))
                c.kubectl("apply", "-f", "-", input=batch, timeout=300)
            made = n

            def all_ready(n: int = n) -> bool:
                return ready_count(c) >= n

            c.wait_for(all_ready, 900, f"{n} ModelServices Ready", 2.0)
            settle = time.monotonic() - t0
            time.sleep(10)  # let creation's tail (events, status echoes) pass before measuring
            idle = window(c, args.window, proc.pid)
            base = result["baseline"]["requests_per_s"]
            idle["above_baseline_per_s"] = round(idle["requests_per_s"] - base, 2)
            run = {"modelservices": n, "all_ready_s": round(settle, 1), "idle": idle}
            result["runs"].append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
        result["change"] = change_cost(c, 50)
        result["repair_s"] = {
            "service deleted": repair_seconds(c, "service", "m0001", None),
            "pdb deleted": repair_seconds(c, "pdb", "m0002", None),
            "serviceaccount deleted": repair_seconds(c, "serviceaccount", "m0003", None),
            "service selector edited": repair_seconds(
                c, "service", "m0004", ['{"spec":{"selector":{"serving.shoal.dev/model":"x"}}}']
            ),
            "deployment edited": repair_seconds(
                c, "deployment", "m0005", ['{"spec":{"revisionHistoryLimit":7}}']
            ),
        }
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        cluster_mod.stop(Slot(c.slot), c.pid)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
