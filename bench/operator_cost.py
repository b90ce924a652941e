"""What the API server counts of the operator, and the cost of one reconcile (for
bench.operator_load): request counters, the operator's own identity, K spec edits timed through
a watch, and the flatness verdict across ModelService counts.

`apiserver_request_total` has no user label, so it cannot tell the operator's requests from
kubectl's and the controllers'. `authenticated_user_requests` has one, compressed by the API
server to a few values: every ordinary name (kubectl's `kubernetes-admin`, the controllers'
service accounts, the kubelets, the scheduler) counts as `other`, a name with an `@` as
`email_id`. So the operator runs here with a client certificate for `OPERATOR_USER`, bound to
its own ClusterRole from crds/operator-rbac.yaml (its real permissions, not admin's), and the
`email_id` counter is exactly its requests, watches included (each counted once, when opened).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from e2e import pki as pki_mod
from e2e.cluster import Cluster
from e2e.kube import ssl_context

OPERATOR_USER = "shoal-operator@bench.shoal.dev"
OPERATOR_BUCKET = "email_id"  # what the API server files OPERATOR_USER under
MSVC_PATH = "/apis/serving.shoal.dev/v1alpha1/namespaces/{ns}/modelservices"
FLAT_WITHIN = 1.5  # the goal: the largest count's cost per edit within this factor of 1's


def _labels(text: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in (part.split("=", 1) for part in text.split(","))}


def scrape(c: Cluster) -> tuple[Counter[str], int]:
    """apiserver_request_total by `VERB resource[/subresource]` (resource requests only, every
    user), and the operator's own requests (every kind, non-resource ones too)."""
    kinds: Counter[str] = Counter()
    operator = 0
    for line in c.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        name, _, rest = line.partition("{")
        if name not in ("apiserver_request_total", "authenticated_user_requests"):
            continue
        labels_text, _, value = rest.rpartition(" ")
        labels = _labels(labels_text.rstrip("}"))
        if name == "authenticated_user_requests":
            operator += int(float(value)) if labels.get("username") == OPERATOR_BUCKET else 0
            continue
        resource, sub = labels.get("resource", ""), labels.get("subresource", "")
        if resource:
            kinds[f"{labels['verb']} {resource}{'/' + sub if sub else ''}"] += int(float(value))
    return kinds, operator


BINDING = "shoal-bench-operator"
"""The ClusterRoleBinding that grants OPERATOR_USER the operator's role (removed after a run)."""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def admin_client(c: Cluster) -> httpx.Client:
    """A direct client for the bench's own edits and watches (a kubectl process per request
    would cost more CPU than the operator's reconcile on this 2-core machine)."""
    verify = ssl_context(pki_mod.Pki(c.run_dir / "pki"), "admin")
    return httpx.Client(base_url=c.api_url, verify=verify, timeout=30.0, trust_env=False)


def operator_kubeconfig(c: Cluster, code_root: Path, dest: Path) -> Path:
    """Issue OPERATOR_USER's client certificate from the cluster's CA, bind it to the operator's
    ClusterRole (applying crds/operator-rbac.yaml of `code_root`), and write its kubeconfig."""
    cluster_pki = pki_mod.Pki(c.run_dir / "pki")
    ca_cert = x509.load_pem_x509_certificate(cluster_pki.ca_crt.read_bytes())
    ca_key = serialization.load_pem_private_key(cluster_pki.ca_key.read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"the cluster CA key is {type(ca_key).__name__}, not EC")
    dest.mkdir(parents=True, exist_ok=True)
    own = pki_mod.Pki(dest)
    shutil.copyfile(cluster_pki.ca_crt, own.ca_crt)
    # The harness's own issuer: one more client certificate of the kind it writes for its users.
    pki_mod._write_client(own, ca_cert, ca_key, "bench-operator", OPERATOR_USER, None)
    pki_mod.write_kubeconfig(
        own.kubeconfig("bench-operator"), own, "bench-operator", c.api_url, "bench"
    )
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shoal-system"}}
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": BINDING},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "shoal-operator"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": OPERATOR_USER}],
    }  # fmt: skip
    docs = "\n---\n".join(json.dumps(d) for d in (namespace, binding))
    c.kubectl("apply", "-f", "-", input=docs)
    c.kubectl("apply", "-f", str(code_root / "crds" / "operator-rbac.yaml"))
    return own.kubeconfig("bench-operator")


def _observed(obj: dict[str, Any], generation: int) -> bool:
    return int((obj.get("status") or {}).get("observedGeneration") or 0) >= generation


def _rolled_out(obj: dict[str, Any], generation: int) -> bool:
    """The end of one edit's chain of passes: the operator applied the Deployment (its status
    then says `Updating`), the Deployment controller caught up, and the pass that saw that
    says `RolloutComplete` for this generation."""
    conds = {x["type"]: x for x in (obj.get("status") or {}).get("conditions") or []}
    progressing = conds.get("Progressing", {})
    return (
        _observed(obj, generation)
        and progressing.get("reason") == "RolloutComplete"
        and int(progressing.get("observedGeneration") or 0) >= generation
    )


def edit_and_wait(
    api: httpx.Client, ns: str, name: str, value: int, deadline_s: float
) -> tuple[float, float]:
    """Patch `batching.maxBatchSize` of one ModelService to `value`; return the seconds from
    sending the patch to the watch event whose status shows the new generation observed, and to
    the one that shows its rollout complete."""
    path = MSVC_PATH.format(ns=ns)
    t0 = time.monotonic()
    resp = api.patch(
        f"{path}/{name}",
        content=json.dumps({"spec": {"batching": {"maxBatchSize": value}}}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    resp.raise_for_status()
    obj = resp.json()
    generation = int(obj["metadata"]["generation"])
    if _observed(obj, generation):
        raise AssertionError(f"{name}: maxBatchSize={value} did not change the generation")
    # Watching from the patch's resourceVersion: every later change arrives, none is missed.
    params = {
        "watch": "true",
        "fieldSelector": f"metadata.name={name}",
        "resourceVersion": obj["metadata"]["resourceVersion"],
        "timeoutSeconds": str(math.ceil(deadline_s)),
    }
    observed: float | None = None
    with api.stream("GET", path, params=params, timeout=deadline_s) as stream:
        stream.raise_for_status()
        for line in stream.iter_lines():
            if not line:
                continue
            event = json.loads(line)
            if event["type"] == "ERROR":
                raise AssertionError(f"watch of {name} failed: {event['object']}")
            now = time.monotonic() - t0
            if observed is None and _observed(event["object"], generation):
                observed = now
            if _rolled_out(event["object"], generation):
                return observed if observed is not None else now, now
            if now > deadline_s:
                break
    what = "observed" if observed is None else "rolled out"
    raise AssertionError(f"{name}: generation {generation} not {what} within {deadline_s:g}s")


def _percentile(values: list[float], q: float) -> float:
    """Nearest rank (with 20 edits, p99 is the slowest one)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def reconcile_cost(
    c: Cluster,
    api: httpx.Client,
    ns: str,
    count: int,
    edits: int,
    first_value: int,
    pid: int,
    idle_cpu_per_s: float,
    deadline_s: float = 120.0,
) -> dict[str, Any]:
    """`edits` edits one after another over the first min(count, edits) ModelServices. Each is
    one reconcile chain on its own: the next starts once the previous has rolled out and the
    operator has sent nothing between two scrapes (its trailing Event included), so editing one
    object 20 times costs what editing 20 objects once does. Requests are counted over the
    whole span; CPU only from each patch to its rollout (the quiet waits would add idle CPU),
    then also net of the idle rate measured just before (kopf's bookkeeping, the autoscaler's
    ticks, resyncs), with the share that subtraction took."""
    names = [f"m{i % count:04d}" for i in range(edits)]
    kinds0, op0 = scrape(c)
    t0 = time.monotonic()
    observed: list[float] = []
    rolled_out: list[float] = []
    cpu = 0.0
    for k, name in enumerate(names):
        cpu0 = cpu_seconds(pid)
        seen, done = edit_and_wait(api, ns, name, first_value + k, deadline_s)
        cpu += cpu_seconds(pid) - cpu0
        observed.append(seen)
        rolled_out.append(done)
        last: list[int] = []

        def quiet(last: list[int] = last) -> bool:
            sent = scrape(c)[1]
            last.append(sent)
            return last[-2:-1] == [sent]

        c.wait_for(quiet, deadline_s, f"the operator quiet after edit {k} of {name}", 0.5)
    span = time.monotonic() - t0
    kinds1, op1 = scrape(c)
    delta = kinds1 - kinds0
    idle = min(cpu, idle_cpu_per_s * sum(rolled_out))
    return {
        "edits": edits,
        "objects_edited": len(set(names)),
        "seconds": round(span, 1),
        "operator_requests_per_edit": round((op1 - op0) / edits, 2),
        # Every user's, the bench's own PATCH and WATCH modelservices too.
        "by_kind_all_users": dict(delta.most_common(10)),
        "cpu_ms_per_edit": round(cpu / edits * 1000, 1),
        "cpu_ms_per_edit_net_of_idle": round((cpu - idle) / edits * 1000, 1),
        "idle_share_of_cpu": round(idle / cpu, 2) if cpu > 0 else 0.0,
        "latency_ms": {
            what: {
                "p50": round(_percentile(values, 50) * 1000, 1),
                "p99": round(_percentile(values, 99) * 1000, 1),
            }
            for what, values in (("observed", observed), ("rolled_out", rolled_out))
        },
    }


def flatness(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """met/missed: the largest count's operator requests and CPU per edit within FLAT_WITHIN of
    the smallest count's (a reconcile reads the operator's cache, so it should not grow with
    the number of objects). CPU is judged as measured, the idle rate included: the larger count
    idles more, so that overstates its growth and a `met` holds for the reconcile alone too;
    the ratio net of idle is given beside it (with a large idle share it is mostly noise)."""
    small, large = runs[0], runs[-1]
    out: dict[str, Any] = {"compared": [small["modelservices"], large["modelservices"]]}
    for key in ("operator_requests_per_edit", "cpu_ms_per_edit", "cpu_ms_per_edit_net_of_idle"):
        a, b = small["reconcile"][key], large["reconcile"][key]
        ratio = b / a if a > 0 else (1.0 if b == 0 else math.inf)
        out[key] = {"ratio": round(ratio, 2), "goal": f"<= {FLAT_WITHIN}"}
        if not key.endswith("net_of_idle"):
            out[key]["verdict"] = "met" if ratio <= FLAT_WITHIN else "missed"
    return out
