"""Helpers for the operator's tests on the local control plane: install the CRDs, run the
operator in-process with kopf.testing.KopfRunner (standalone, namespace-scoped), and wait on
ModelService status with named deadlines."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import yaml
from kopf.testing import KopfRunner

from shoal.operator import crdgen
from shoal.operator.handlers import configure_kopf, register
from shoal.operator.reconciler import Reconciler
from shoal.operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = [ROOT / "crds" / crdgen.CRD_FILENAME, ROOT / "crds" / crdgen.PEERING_FILENAME]


def install_crds(cluster: Any) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", *(f"-f={p}" for p in CRD_FILES))

    # Polled, not `kubectl wait`: that fails outright while the CRD has no conditions yet.
    def established() -> bool:
        crd = cluster.get_json(f"crd/{crdgen.CRD_NAME}")
        conds = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions") or []}
        return conds.get("Established") == "True"

    cluster.wait_for(established, 60, f"crd/{crdgen.CRD_NAME} Established")


def manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "serving.shoal.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name},
        "spec": copy.deepcopy(spec),
    }


@dataclass
class Operator:
    """A running in-process operator plus kubectl helpers for its namespace."""

    cluster: Any
    namespace: str
    reconciler: Reconciler
    runner: KopfRunner
    stop: Callable[[], None] = field(default=lambda: None)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return self.cluster.kubectl("-n", self.namespace, *args, input=input, check=check)

    def apply(self, doc: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        proc = self.kubectl("get", kind, name, "-o", "json", check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr:
                return None
            raise AssertionError(proc.stderr)
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def items(self, kind: str, selector: str) -> list[dict[str, Any]]:
        out = self.kubectl("get", kind, "-l", selector, "-o", "json").stdout
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        obj = self.get("msvc", name) or {}
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c["type"] == type_:
                return dict(c)
        return None

    def wait_condition(
        self, name: str, type_: str, status: str, reason: str | None = None, timeout: float = 90
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            c = self.condition(name, type_)
            if c and c["status"] == status and (reason is None or c["reason"] == reason):
                return c
            return None

        what = f"msvc/{name} {type_}={status}" + (f" ({reason})" if reason else "")
        result: dict[str, Any] = self.cluster.wait_for(check, timeout, what)
        return result

    def wait_status(
        self, name: str, pred: Callable[[dict[str, Any]], bool], what: str, timeout: float = 90
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = self.get("msvc", name)
            return obj if obj is not None and pred(obj.get("status") or {}) else None

        result: dict[str, Any] = self.cluster.wait_for(check, timeout, f"msvc/{name}: {what}")
        return result

    def poke(self, name: str) -> None:
        """Make a watch event for msvc `name` (an annotation change), so the operator runs a
        pass now."""
        self.kubectl(
            "annotate", "msvc", name, f"test.shoal.dev/poke={time.monotonic_ns()}", "--overwrite"
        )

    def wait_passes(self, at_least: int, timeout: float = 60) -> None:
        self.cluster.wait_for(
            lambda: self.reconciler.passes >= at_least, timeout, f"{at_least} reconcile passes"
        )

    def ready_pod_ips(self, name: str) -> list[str]:
        pods = self.items("pods", f"serving.shoal.dev/model={name}")
        out = []
        for p in pods:
            if p["metadata"].get("deletionTimestamp"):
                continue
            conds = {c["type"]: c["status"] for c in p.get("status", {}).get("conditions", [])}
            if conds.get("Ready") == "True" and p["status"].get("podIP"):
                out.append(str(p["status"]["podIP"]))
        return out

    def ready_endpoints(self, name: str) -> list[str]:
        """Ready addresses in the model Service's EndpointSlices (what a gateway routes to)."""
        slices = self.items("endpointslices", f"kubernetes.io/service-name={name}")
        out: list[str] = []
        for s in slices:
            for ep in s.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready"):
                    out.extend(ep.get("addresses") or [])
        return out


def infer_v2(ip: str, model: str, data: list[int], timeout: float = 5.0) -> list[int]:
    body = {"inputs": [{"name": "x", "shape": [len(data)], "datatype": "INT64", "data": data}]}
    req = urllib.request.Request(
        f"http://{ip}:8000/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        doc = json.loads(resp.read())
    result: list[int] = doc["outputs"][0]["data"]
    return result


class FakeClock:
    """A monotonic clock the test advances (the operator's alias poll reads it)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def operator_settings(namespace: str, **overrides: Any) -> OperatorSettings:
    base: dict[str, Any] = {
        "namespaces": (namespace,),
        "standalone": True,
        "liveness_endpoint": None,
        # Drift must be repaired from watch events, not by a resync that would hide a missed one.
        "resync_seconds": 600.0,
        "run_as_user": 1000,
    }
    base.update(overrides)
    return OperatorSettings(**base)


@contextlib.contextmanager
def running_operator(
    cluster: Any, namespace: str, settings: OperatorSettings
) -> Iterator[Operator]:
    registry, rec = register(settings)
    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings, settings)
    kopf_settings.watching.server_timeout = 10
    kopf_settings.watching.client_timeout = 15
    args = ["run", "--standalone", "-n", namespace]
    with KopfRunner(args, registry=registry, settings=kopf_settings, timeout=60) as runner:
        yield Operator(cluster, namespace, rec, runner)
    # KopfRunner(reraise=True) re-raises an operator crash here; also no unhandled tracebacks.
    assert runner.exception is None
    assert "Traceback" not in runner.output, runner.output[-4000:]


class Load:
    """Requests in a background thread to ready endpoints, refreshed from the EndpointSlices
    like a gateway would; counts every failed request."""

    def __init__(
        self,
        op: Operator,
        name: str,
        data: list[int],
        infer: Callable[[str, str, list[int]], list[int]] | None = None,
    ) -> None:
        self.op, self.name, self.data = op, name, data
        self.infer = infer or infer_v2
        self.ok = 0
        self.failures: list[str] = []
        self.refresh_errors: list[str] = []
        self.answers: set[tuple[int, ...]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._endpoints: list[str] = []
        self._refreshed = 0.0

    def __enter__(self) -> Load:
        self._endpoints = self.op.ready_endpoints(self.name)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            if time.monotonic() - self._refreshed > 0.3:
                try:
                    self._endpoints = self.op.ready_endpoints(self.name) or self._endpoints
                except AssertionError as exc:  # kubectl hiccup: keep the last known set
                    self.refresh_errors.append(str(exc))
                self._refreshed = time.monotonic()
            if not self._endpoints:
                self._stop.wait(0.05)
                continue
            ip = self._endpoints[i % len(self._endpoints)]
            i += 1
            try:
                self.answers.add(tuple(self.infer(ip, self.name, self.data)))
                self.ok += 1
            except Exception as exc:
                self.failures.append(f"{ip}: {exc}")


# -- shared by the cluster test files ---------------------------------------------------------

ADDER: dict[str, Any] = {
    "model": {"class": "examples.adder:Adder", "config": {"increment": 1}},
    "replicas": 2,
    "batching": {"maxBatchSize": 8, "batchWaitTimeoutMs": 2},
    "health": {"startupTimeoutSeconds": 60, "readinessPeriodSeconds": 1},
    "drain": {"delaySeconds": 3, "gracePeriodSeconds": 5},
}


def cluster_wait(op: Operator, pred: Any, what: str, timeout: float = 90) -> Any:
    return op.cluster.wait_for(pred, timeout, what)


def deployment_env(op: Operator, name: str) -> dict[str, str]:
    dep = op.get("deployment", name) or {}
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in c["env"]}
