"""A fluid queueing model of one model's replicas, driven by a trace and an autoscaler.

Every `dt` seconds: arrivals join one FIFO queue (the gateway balances over ready replicas, and
holds requests while none is ready); ready replicas serve it at `capacity` requests/s each; a
replica ordered by the autoscaler is ready `cold_start_s` later; a removed replica leaves
at once without losing work (starting ones go first, as a ReplicaSet deletes unready pods
first; Shoal's drain finishes what a ready one holds). Each request's queueing delay is the
time between its arrival and the start of its service; its latency adds `service_s`.
Concurrency (queued + in-flight, what the autoscalers see) is the backlog plus the served rate
times `service_s` (Little's law).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from bench.autoscale.peers import Scaler, View
from bench.autoscale.traces import Trace

# Measured (bench/RESULTS.md, 2026-11-27 07:06 run, W2 compute-bound MLP, one 2-CPU replica):
# 3,771 req/s through OIP V2 at 64 clients; p50 9.4 ms at 4 clients (service time unloaded).
CAPACITY_RPS = 3771.0
SERVICE_S = 0.0094
# Issue 17, measured by hand on the local control plane under load: ~30 s from pod creation
# to Ready (model load, probes at 5 s, EndpointSlice).
COLD_START_S = 30.0
SLO_S = 0.5
DT = 0.1


@dataclass(frozen=True)
class World:
    capacity: float = CAPACITY_RPS
    service_s: float = SERVICE_S
    cold_start_s: float = COLD_START_S
    slo_s: float = SLO_S
    dt: float = DT

    @property
    def saturated_concurrency(self) -> float:
        return self.capacity * self.service_s


@dataclass(frozen=True)
class Result:
    trace: str
    scaler: str
    time_to_capacity_s: float | None
    """Worst over the trace's events: from the rise until ready capacity >= arrivals."""
    decision_s: float | None
    """Worst over the events: from the rise until the count asked for covers the arrivals."""
    decisions_to_capacity: int | None
    """Up-decisions between a rise and the count that covers it (worst event)."""
    first_wait_s: float | None
    """Queueing delay of the first request after idle at zero (worst event)."""
    p99_delay_s: float
    over_slo: float
    requests: float
    replica_seconds: float
    scale_events: int
    reversals: int
    max_reversals_per_60s: int


def _percentile(delays: list[tuple[float, float]], q: float) -> float:
    if not delays:
        return 0.0
    arr = np.array(delays)
    order = np.argsort(arr[:, 0])
    d, w = arr[order, 0], arr[order, 1]
    cum = np.cumsum(w)
    return float(d[min(int(np.searchsorted(cum, q * cum[-1])), len(d) - 1)])


def simulate(trace: Trace, scaler: Scaler, world: World) -> Result:
    dt, cap = world.dt, world.capacity
    initial = math.ceil(trace.initial / 0.7 - 1e-9) if trace.initial else 0
    ready_at: list[float] = [-math.inf] * initial
    current = initial
    queue: deque[list[float]] = deque()  # [arrival time, requests]
    delays: list[tuple[float, float]] = []
    requests = replica_s = 0.0
    history: list[tuple[float, int]] = []
    steps = round(trace.duration_s / dt)
    first_waits: dict[float, float] = {}
    decided: dict[float, float] = {}
    reached: dict[float, float] = {}
    ups_before: dict[float, int] = {}
    for k in range(1, steps + 1):
        t = k * dt
        rate = trace.rate(t) * cap
        arrivals = rate * dt
        if arrivals > 0:
            queue.append([t, arrivals])
            requests += arrivals
        ready = sum(1 for r in ready_at if r <= t)
        budget = ready * cap * dt
        served = 0.0
        while queue and budget > 1e-12:
            cohort = queue[0]
            take = min(cohort[1], budget)
            delays.append((t - cohort[0], take))
            for ev in trace.events:
                if ev not in first_waits and cohort[0] >= ev:
                    first_waits[ev] = t - cohort[0]
            cohort[1] -= take
            budget -= take
            served += take
            if cohort[1] <= 1e-12:
                queue.popleft()
        backlog = sum(c[1] for c in queue)
        concurrency = backlog + served / dt * world.service_s
        held = backlog if ready == 0 else 0.0
        view = View(current, ready, len(ready_at) - ready, concurrency, held)
        want = scaler.step(t, view)
        if want > current:
            ready_at += [t + world.cold_start_s] * (want - current)
        elif want < current:
            ready_at = sorted(ready_at)[:want]  # latest-ready (still starting) go first
        if want != current:
            history.append((t, want))
        current = want
        replica_s += len(ready_at) * dt
        ready_now = sum(1 for r in ready_at if r <= t)
        for ev in trace.events:
            if t < ev:
                continue
            if ev not in decided and current * cap >= rate > 0:
                decided[ev] = t - ev
            if ev not in reached and ready_now * cap >= rate > 0:
                reached[ev] = t - ev
            if ev not in decided and want > view.current:
                ups_before[ev] = ups_before.get(ev, 0) + 1
    over = sum(w for d, w in delays if d + world.service_s > world.slo_s)
    counts = [initial, *(n for _, n in history)]
    ups = [b > a for a, b in itertools.pairwise(counts)]
    rev_t = [history[i + 1][0] for i in range(len(ups) - 1) if ups[i] != ups[i + 1]]
    per_window = max((sum(1 for x in rev_t if s <= x < s + 60) for s in rev_t), default=0)

    def worst(values: dict[float, float]) -> float | None:
        if not trace.events:
            return None
        return max(values.get(ev, math.inf) for ev in trace.events)

    return Result(
        trace=trace.name,
        scaler=scaler.name,
        time_to_capacity_s=worst(reached),
        decision_s=worst(decided),
        decisions_to_capacity=max((ups_before.get(ev, 0) + 1 for ev in trace.events), default=None)
        if trace.events
        else None,
        first_wait_s=worst(first_waits) if trace.name == "bursty" else None,
        p99_delay_s=_percentile(delays, 0.99),
        over_slo=over,
        requests=requests,
        replica_seconds=replica_s,
        scale_events=len(history),
        reversals=len(rev_t),
        max_reversals_per_60s=per_window,
    )
