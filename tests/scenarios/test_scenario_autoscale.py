"""Scenarios: the autoscaler on the local control plane, all traffic through a `shoal gateway`,
every request accounted for.

The operator runs in-process with its autoscaler loop, scraping the replicas (pod IPs from its
watch) and the gateway's /metrics (held requests). The model (autoscale_model.Slow) takes 2 s
per batch of at most 4, so a replica serves 2 req/s and 16 closed-loop clients keep a queue:
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
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.cluster import Cluster
from shoal.operator.autoscaler.settings import AutoscalerSettings
from tests.operator.operator_harness import (
    Operator,
    install_crds,
    manifest,
    operator_settings,
    running_operator,
)
from tests.scenarios.test_scenario_composition import _gateway_process

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
NAME = "slow"
LOAD_SECONDS = 2.0
# Slow enough that requests spend their time queued at a replica, not in the clients or the
# gateway (each of which may stall for a second on this shared machine): the queue then reads
# as the number of clients, and 16 clients ask for exactly 4.
BATCH_SECONDS = 2.0
CLIENT_TIMEOUT_MS = 120_000


def spec(replicas: int, min_replicas: int, max_replicas: int = 4) -> dict[str, Any]:
    return {
        "model": {
            "class": "tests.scenarios.autoscale_model:Slow",
            "config": {"batch_seconds": BATCH_SECONDS, "load_seconds": LOAD_SECONDS},
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


# -- the gateway: `shoal gateway --kubernetes` on the bridge address, as in the composition
# scenario (one helper for both) -----------------------------------------------------------


@contextlib.contextmanager
def gateway_process(cluster: Cluster, namespace: str, workdir: Path) -> Iterator[str]:
    with _gateway_process(cluster, namespace, workdir) as (url, _proc, _log):
        yield url


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
            # One task per wanted client, started or let go as `clients` changes (no idle
            # polling: this process also runs the operator).
            workers: dict[int, asyncio.Task[None]] = {}
            while not self._stop.is_set():
                for i in range(self.clients):
                    if i not in workers or workers[i].done():
                        workers[i] = asyncio.create_task(self._worker(c, i))
                await asyncio.sleep(0.1)
            await asyncio.gather(*workers.values())

    async def _worker(self, c: httpx.AsyncClient, i: int) -> None:
        n = 0
        while not self._stop.is_set() and i < self.clients:
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


def _time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def pod_start(pod: dict[str, Any]) -> tuple[float, float]:
    """(created -> container started, started -> Ready) in seconds (1 s resolution)."""
    created = _time(pod["metadata"]["creationTimestamp"])
    started = _time(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
    ready = next(
        _time(c["lastTransitionTime"]) for c in pod["status"]["conditions"] if c["type"] == "Ready"
    )
    return started - created, ready - started


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


def trace(op: Operator) -> str:
    """What the autoscaler saw and decided, tick by tick (for failure messages)."""
    scaler = op.reconciler.autoscaler
    if scaler is None:
        return "no autoscaler"
    lines = []
    for _, obs, d in list(scaler.observed)[-80:]:
        loads = ",".join(f"{r.state.value[0]}{r.load}" for r in obs.replicas)
        lines.append(f"{obs.now:.1f} cur={obs.current} held={obs.held} [{loads}] -> {d.replicas}")
    return "\n".join(lines)


def wait_replicas(op: Operator, n: int, timeout: float, what: str) -> None:
    """Wait until spec.replicas is n; on timeout, say what the autoscaler saw."""
    try:
        op.cluster.wait_for(lambda: spec_replicas(op) == n, timeout, what)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{trace(op)}") from None


def decided_at(op: Operator, since: float) -> float:
    """Seconds from `since` (time.monotonic, the loop's clock too) to the first scale-up."""
    scaler = op.reconciler.autoscaler
    assert scaler is not None
    ups = [o.now for _, o, d in scaler.observed if o.now >= since and d.replicas > o.current]
    assert ups, "no scale-up observed"
    return min(ups) - since


def report(line: str) -> None:
    """Measurements, on the real stderr (kopf's runner swaps sys.stdout while it runs)."""
    print(f"[autoscale e2e] {line}", file=sys.__stderr__, flush=True)


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
            decided_s = decided_at(op, burst_at)
            wait_replicas(op, 4, 60, "4 replicas for 16 clients")
            cluster.wait_for(lambda: len(ready_pods(op)) == 4, 120, "4 ready replicas")
            start = min(pod_start(p) for p in ready_pods(op))
            # (c) Fewer clients: scale-in under load, every request still answered.
            load.clients = 4
            wait_replicas(op, 1, 60, "down to one replica")
            cluster.wait_for(lambda: len(ready_pods(op)) == 1, 90, "one replica left")
            settle = time.monotonic()
            cluster.wait_for(lambda: load.answered_since(settle) > 8, 60, "answers at 1 replica")
        # The load stops: to zero after the idle delay.
        wait_replicas(op, 0, 60, "down to zero")
        cluster.wait_for(
            lambda: not op.items("pods", f"serving.shoal.dev/model={NAME}"), 90, "no pods"
        )
        assert load.failed() == [], [(a.status, a.done - burst_at) for a in load.failed()][:20]
        assert len(load.answers) > 30
        assert op.reconciler.autoscaler is not None
        moves = [(d.replicas, d.reason) for _, d in op.reconciler.autoscaler.decisions]
        assert moves[0][1].startswith("from zero"), moves
        assert moves[-1][0] == 0, moves
        assert moves[-1][1].startswith("to zero"), moves
        events = autoscaled_events(op)
        assert len(events) == len(moves), (events, moves)  # an Event per decision
        report(
            f"from zero: decided {decided_s:.1f} s after the burst, first request waited "
            f"{first_wait:.1f} s ({BATCH_SECONDS} s of it its own batch); first replica: "
            "created -> "
            f"container started {start[0]:.0f} s, started -> Ready {start[1]:.0f} s "
            f"(model load {LOAD_SECONDS} s)"
        )
        report(f"answers {len(load.answers)}, failed 0; events {events}")


def test_step_is_one_decision_and_an_operator_restart_does_not_flap(
    env: tuple[Cluster, str, str],
) -> None:
    cluster, ns, gateway = env
    load = Load(gateway, 0).start()  # one load across both operator processes
    try:
        with running_operator(cluster, ns, settings_for(ns, gateway)) as op:
            op.apply(manifest(NAME, spec(replicas=1, min_replicas=1)))
            cluster.wait_for(lambda: len(ready_pods(op)) == 1, 120, "one ready replica")
            # (b) 1 -> 4 in one decision: one scale write, one Event.
            load.clients = 16
            step_at = time.monotonic()
            wait_replicas(op, 4, 30, "4 replicas")
            decided_s = decided_at(op, step_at)
            cluster.wait_for(lambda: len(ready_pods(op)) == 4, 120, "4 ready replicas")
            assert op.reconciler.autoscaler is not None
            writes = [d.replicas for _, d in op.reconciler.autoscaler.decisions]
            assert writes == [4], f"{writes}\n{trace(op)}"
        # (d) A new operator process while the load goes on: a fresh policy state, no flap.
        with running_operator(cluster, ns, settings_for(ns, gateway)) as op2:
            restarted = time.monotonic()
            seen: set[int] = set()
            while time.monotonic() - restarted < 14:  # beyond the 8 s scale-down delay
                seen.add(spec_replicas(op2))
                time.sleep(0.5)
            assert seen == {4}, f"the count moved after the restart: {seen}\n{trace(op2)}"
            # Scaling goes on: fewer clients -> fewer replicas.
            load.clients = 4
            wait_replicas(op2, 1, 60, "down to 1 after the restart")
            assert op2.reconciler.autoscaler is not None
            writes2 = [d.replicas for _, d in op2.reconciler.autoscaler.decisions]
            assert writes2 == [1], f"{writes2}\n{trace(op2)}"
    finally:
        load.stop()
    assert load.failed() == [], [(a.status, a.sent - step_at) for a in load.failed()][:20]
    report(f"step 1 -> 4 decided {decided_s:.1f} s after the step (one write); restart: no flap")


def test_a_replica_killed_under_load_is_replaced_and_only_its_own_requests_can_fail(
    env: tuple[Cluster, str, str],
) -> None:
    cluster, ns, gateway = env
    with running_operator(cluster, ns, settings_for(ns, gateway)) as op:
        op.apply(manifest(NAME, spec(replicas=2, min_replicas=2, max_replicas=2)))
        cluster.wait_for(lambda: len(ready_pods(op)) == 2, 120, "two ready replicas")
        with running_load(gateway, clients=8) as load:
            cluster.wait_for(lambda: load.answered_since(0) > 10, 60, "answers before the kill")
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
            cluster.wait_for(lambda: load.answered_since(after) > 10, 60, "answers after")
        failed = load.failed()
        # What the killed replica held: at most its queue (8 clients, 2 replicas, ~4 each).
        assert len(failed) <= 8, [(a.status, a.sent - killed_at) for a in failed]
        assert all(abs(a.sent - killed_at) < 5 for a in failed), "only around the kill"
        report(f"killed {victim}: {len(failed)} failed of {len(load.answers)}")


def test_an_hpa_on_the_scale_subresource_is_accepted_and_can_scale(
    k8s_cluster: Cluster, k8s_namespace: str
) -> None:
    """examples/autoscaling/adder-hpa.yaml against the real API server and HPA controller:
    accepted, and the controller reads the ModelService's scale subresource (AbleToScale). No
    metrics API runs here, so it goes no further than that."""
    install_crds(k8s_cluster)
    ns = k8s_namespace
    k8s_cluster.apply(ns, (ROOT / "examples" / "adder.yaml").read_text())
    k8s_cluster.apply(ns, (ROOT / "examples" / "autoscaling" / "adder-hpa.yaml").read_text())

    def able() -> dict[str, Any] | None:
        hpa = k8s_cluster.get_json("hpa", "-n", ns, "adder")
        for c in (hpa.get("status") or {}).get("conditions") or []:
            if c["type"] == "AbleToScale" and c["status"] == "True":
                return dict(c)
        return None

    cond = k8s_cluster.wait_for(able, 60, "the HPA able to scale the ModelService")
    assert cond["reason"] in ("SucceededGetScale", "ReadyForNewScale", "SucceededRescale")
