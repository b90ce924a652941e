"""Scenarios: the autoscaler on the local control plane, all traffic through a `shoal gateway`,
every request accounted for.

The operator runs in-process with its autoscaler loop, scraping the replicas (pod IPs from its
watch) and the gateway's /metrics (held requests). The model (autoscale_model.Slow) takes 0.1 s
per batch of at most 4, so a replica serves ~40 req/s and 16 closed-loop clients keep a queue:
with targetQueueDepth 4 that asks for 4 replicas. Windows are short (scale-down delay 8 s,
to zero after 16 s idle) to keep each scenario bounded on this 2-core machine.

(a) from zero, a burst is held by the gateway, replicas come up, every request answers 2xx;
(b) a step from 1 replica to N is one decision (one scale write, one Event);
(c) the load steps down and stops: down to the minimum, then to zero, with 0 requests lost;
(d) the operator restarts under load: no flapping, and scaling goes on afterwards;
(e) a replica SIGKILLed under load is replaced; only requests it already held may fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.cluster import Cluster
from shoal.operator.autoscaler.settings import AutoscalerSettings
from shoal.runtime.testing import shoal_command
from tests.operator.operator_harness import (
    Operator,
    install_crds,
    manifest,
    operator_settings,
    running_operator,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
NAME = "slow"
LOAD_SECONDS = 2.0
CLIENT_TIMEOUT_MS = 120_000


def spec(replicas: int, min_replicas: int, max_replicas: int = 4) -> dict[str, Any]:
    return {
        "model": {
            "class": "tests.scenarios.autoscale_model:Slow",
            "config": {"batch_seconds": 0.1, "load_seconds": LOAD_SECONDS},
        },
        "replicas": replicas,
        "batching": {"maxBatchSize": 4, "batchWaitTimeoutMs": 1, "maxQueueSize": 256},
        "resources": {"cpu": "50m", "memory": "256Mi"},
        "drain": {"delaySeconds": 1, "gracePeriodSeconds": 20},
        "autoscaling": {
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "targetQueueDepth": 4,
            "scaleDownDelaySeconds": 8,
            "scaleToZeroDelaySeconds": 16,
        },
    }


# -- the gateway ----------------------------------------------------------------------------


@contextlib.contextmanager
def gateway_process(cluster: Cluster, namespace: str, workdir: Path) -> Iterator[str]:
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
            assert proc.poll() is None, log_file.read_text(errors="replace")[-3000:]
            text = port_file.read_text().strip() if port_file.exists() else ""
            return text or None

        port = cluster.wait_for(listening, 30, "the gateway's port file")
        yield f"http://{cluster.host_ip}:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- load: closed-loop clients through the gateway, every answer recorded -------------------


@dataclass
class Answer:
    sent: float
    done: float
    status: int
    """HTTP status, or 0 when the request got no answer (connection failure)."""
    ok: bool
    """2xx with the right prediction."""


@dataclass
class Load:
    url: str
    clients: int = 0
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.clients = 0
        self._stop.set()
        if self._thread is not None:
            self._thread.join(CLIENT_TIMEOUT_MS / 1000 + 10)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_MS / 1000 + 5, limits=limits) as c:
            workers = [asyncio.create_task(self._worker(c, i)) for i in range(64)]
            await asyncio.gather(*workers)

    async def _worker(self, c: httpx.AsyncClient, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            if i >= self.clients:
                await asyncio.sleep(0.05)
                continue
            n += 1
            x = i * 1_000_000 + n
            sent = time.monotonic()
            try:
                resp = await c.post(
                    f"{self.url}/v1/models/{NAME}:predict",
                    json={"instances": [x]},
                    headers={"x-shoal-timeout-ms": str(CLIENT_TIMEOUT_MS)},
                )
                ok = resp.status_code == 200 and resp.json()["predictions"] == [x + 1]
                self.answers.append(Answer(sent, time.monotonic(), resp.status_code, ok))
            except httpx.HTTPError:
                self.answers.append(Answer(sent, time.monotonic(), 0, False))

    def failed(self, since: float = 0.0) -> list[Answer]:
        return [a for a in self.answers if a.sent >= since and not a.ok]

    def answered_since(self, t: float) -> int:
        return sum(1 for a in self.answers if a.done >= t and a.ok)


@contextlib.contextmanager
def running_load(url: str, clients: int) -> Iterator[Load]:
    load = Load(url, clients).start()
    try:
        yield load
    finally:
        load.stop()


# -- cluster views --------------------------------------------------------------------------


def spec_replicas(op: Operator) -> int:
    obj = op.get("msvc", NAME) or {}
    return int((obj.get("spec") or {}).get("replicas", -1))


def ready_pods(op: Operator) -> list[dict[str, Any]]:
    out = []
    for p in op.items("pods", f"serving.shoal.dev/model={NAME}"):
        conds = {c["type"]: c["status"] for c in (p.get("status") or {}).get("conditions") or []}
        if not p["metadata"].get("deletionTimestamp") and conds.get("Ready") == "True":
            out.append(p)
    return out


def autoscaled_events(op: Operator) -> list[str]:
    out = op.kubectl(
        "get",
        "events",
        "--field-selector",
        f"involvedObject.name={NAME},reason=Autoscaled",
        "-o",
        "jsonpath={range .items[*]}{.message}{'\\n'}{end}",
    ).stdout
    return [line for line in out.splitlines() if line]


def settings_for(ns: str, gateway: str) -> Any:
    return operator_settings(
        ns,
        autoscaler=AutoscalerSettings(
            gateway_metrics_urls=(f"{gateway}/metrics",), status_interval_seconds=1.0
        ),
    )


@pytest.fixture
def env(
    k8s_cluster: Cluster, k8s_namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Cluster, str, str]]:
    install_crds(k8s_cluster)
    monkeypatch.setenv("KUBECONFIG", str(k8s_cluster.kubeconfig))
    with gateway_process(k8s_cluster, k8s_namespace, tmp_path) as gateway:
        yield k8s_cluster, k8s_namespace, gateway


# -- the scenarios --------------------------------------------------------------------------


def test_from_zero_burst_then_down_to_min_and_zero_losing_nothing(
    env: tuple[Cluster, str, str],
) -> None:
    cluster, ns, gateway = env
    with running_operator(cluster, ns, settings_for(ns, gateway)) as op:
        op.apply(manifest(NAME, spec(replicas=0, min_replicas=0)))
        op.wait_condition(NAME, "Ready", "True", timeout=60)  # Ready at zero on purpose
        assert ready_pods(op) == []
        # (a) A burst at zero: held by the gateway, which tells the autoscaler.
        with running_load(gateway, clients=16) as load:
            burst_at = time.monotonic()
            first = cluster.wait_for(
                lambda: next((a for a in load.answers if a.ok), None), 120, "a first answer"
            )
            first_wait = first.done - first.sent
            cluster.wait_for(lambda: spec_replicas(op) == 4, 60, "4 replicas for 16 clients")
            cluster.wait_for(lambda: len(ready_pods(op)) == 4, 120, "4 ready replicas")
            # (c) Fewer clients: scale-in under load, every request still answered.
            load.clients = 4
            cluster.wait_for(lambda: spec_replicas(op) == 1, 60, "down to one replica")
            cluster.wait_for(lambda: len(ready_pods(op)) == 1, 90, "one replica left")
            settle = time.monotonic()
            cluster.wait_for(lambda: load.answered_since(settle) > 20, 30, "answers at 1 replica")
        # The load stops: to zero after the idle delay.
        cluster.wait_for(lambda: spec_replicas(op) == 0, 60, "down to zero")
        cluster.wait_for(
            lambda: not op.items("pods", f"serving.shoal.dev/model={NAME}"), 90, "no pods"
        )
        assert load.failed() == [], [(a.status, a.done - burst_at) for a in load.failed()][:20]
        assert len(load.answers) > 100
        events = autoscaled_events(op)
        assert events[0].startswith("0 -> "), events
        assert events[-1].startswith("1 -> 0: to zero"), events
        print(f"from zero: first request waited {first_wait:.1f} s (model load {LOAD_SECONDS} s)")
        print(f"answers {len(load.answers)}, failed 0; events {events}")


def test_step_is_one_decision_and_an_operator_restart_does_not_flap(
    env: tuple[Cluster, str, str],
) -> None:
    cluster, ns, gateway = env
    with running_operator(cluster, ns, settings_for(ns, gateway)) as op:
        op.apply(manifest(NAME, spec(replicas=1, min_replicas=1)))
        cluster.wait_for(lambda: len(ready_pods(op)) == 1, 120, "one ready replica")
        with running_load(gateway, clients=16) as load:
            # (b) 1 -> 4 in one decision: one scale write, one Event.
            step_at = time.monotonic()
            cluster.wait_for(lambda: spec_replicas(op) == 4, 30, "4 replicas")
            assert op.reconciler.autoscaler is not None
            writes = [d.replicas for _, d in op.reconciler.autoscaler.decisions]
            assert writes == [4], writes
            decided_s = time.monotonic() - step_at
            cluster.wait_for(lambda: len(ready_pods(op)) == 4, 120, "4 ready replicas")
    # (d) A new operator process while the load goes on: fresh policy state, no flap.
    with (
        running_load(gateway, clients=16) as load2,
        running_operator(cluster, ns, settings_for(ns, gateway)) as op2,
    ):
        restarted = time.monotonic()
        seen: set[int] = set()
        while time.monotonic() - restarted < 14:  # beyond the 8 s scale-down delay
            seen.add(spec_replicas(op2))
            time.sleep(0.5)
        assert seen == {4}, f"the count moved after the restart: {seen}"
        # Scaling goes on: fewer clients -> fewer replicas.
        load2.clients = 4
        cluster.wait_for(lambda: spec_replicas(op2) == 1, 60, "down to 1 after the restart")
        assert op2.reconciler.autoscaler is not None
        writes2 = [d.replicas for _, d in op2.reconciler.autoscaler.decisions]
        assert writes2 == [1], writes2
    assert load.failed() == []
    assert load2.failed() == []
    print(f"step 1 -> 4 decided in {decided_s:.1f} s (one write); restart: no change in 14 s")


def test_a_replica_killed_under_load_is_replaced_and_only_its_own_requests_can_fail(
    env: tuple[Cluster, str, str],
) -> None:
    cluster, ns, gateway = env
    with running_operator(cluster, ns, settings_for(ns, gateway)) as op:
        op.apply(manifest(NAME, spec(replicas=2, min_replicas=2, max_replicas=2)))
        cluster.wait_for(lambda: len(ready_pods(op)) == 2, 120, "two ready replicas")
        with running_load(gateway, clients=8) as load:
            cluster.wait_for(lambda: load.answered_since(0) > 50, 30, "answers before the kill")
            victim = ready_pods(op)[0]["metadata"]["name"]
            killed_at = time.monotonic()
            for pid in cluster.pod_pids(ns, victim):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            # Replaced (the container restarts in place, as for a crash) and serving again.
            cluster.wait_for(
                lambda: len(ready_pods(op)) == 2 and time.monotonic() - killed_at > 3,
                120,
                "two ready replicas again",
            )
            after = time.monotonic()
            cluster.wait_for(lambda: load.answered_since(after) > 50, 30, "answers after")
        failed = load.failed()
        # What the killed replica held: at most its queue (8 clients, 2 replicas, ~4 each).
        assert len(failed) <= 8, [(a.status, a.sent - killed_at) for a in failed]
        assert all(abs(a.sent - killed_at) < 5 for a in failed), "only around the kill"
        print(f"killed {victim}: {len(failed)} failed of {len(load.answers)}")


def test_an_hpa_on_the_scale_subresource_is_accepted_and_can_scale(
    k8s_cluster: Cluster, k8s_namespace: str
) -> None:
    """examples/adder-hpa.yaml against the real API server and HPA controller: accepted, and
    the controller reads the ModelService's scale subresource (AbleToScale). No metrics API
    runs here, so it goes no further than that."""
    install_crds(k8s_cluster)
    ns = k8s_namespace
    k8s_cluster.apply(ns, (ROOT / "examples" / "adder.yaml").read_text())
    k8s_cluster.apply(ns, (ROOT / "examples" / "adder-hpa.yaml").read_text())

    def able() -> dict[str, Any] | None:
        hpa = k8s_cluster.get_json("hpa", "-n", ns, "adder")
        for c in (hpa.get("status") or {}).get("conditions") or []:
            if c["type"] == "AbleToScale" and c["status"] == "True":
                return dict(c)
        return None

    cond = k8s_cluster.wait_for(able, 60, "the HPA able to scale the ModelService")
    assert cond["reason"] in ("SucceededGetScale", "ReadyForNewScale", "SucceededRescale")
