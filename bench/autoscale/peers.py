"""The autoscalers under comparison, each called every simulator step with what it could see.

Shoal's is the real policy (shoal/operator/autoscaler/policy.py) fed as the operator's loop
feeds it. The peers are re-implemented from their sources with their default timings
(/work/shared/research/anchors-algorithms.md §1b, §2, §3a-b):

- Knative KPA (autoscaler.go): 1 s metric buckets, a decision every 2 s over a 60 s stable and a
  6 s panic window; panic when the panic window asks for 2x the ready pods, and then the count
  never drops until 60 s without that; max scale-up rate 1000, max scale-down rate 2 (at most
  halving per decision); to zero after a stable window without traffic plus the 30 s grace.
- Ray Serve (autoscaling_policy.py): replicas record every 0.5 s, push every 10 s the mean of the
  last 30 s; a 0.1 s control loop; up after 30 s of consecutive "up" decisions, down after 600 s
  of "down"; the cold-start fast path from zero (given the benefit of the doubt: immediate).
- HPA + KEDA (replica_calculator.go, KEDA's Prometheus scaler): Prometheus scrapes every 15 s,
  KEDA polls every 30 s (0 <-> 1 itself, back to 0 after a 300 s cooldown), the HPA syncs every
  15 s with `ceil(value / threshold)`, a 0.1 tolerance, at most max(+4, x2) per sync up and a
  300 s stabilisation window down.

Every one aims at the same per-replica concurrency `target` (queued + in-flight): their
defaults are in other units (KPA 70 % of containerConcurrency, Ray's target_ongoing_requests,
KEDA's threshold), so one number for all leaves only the dynamics to compare.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from shoal.operator.autoscaler import policy


@dataclass(frozen=True)
class View:
    """What the world looks like at one simulator step."""

    current: int
    """The scale target (what the scaler last asked for)."""
    ready: int
    starting: int
    concurrency: float
    """Queued + in-flight over all replicas, plus what is held while none is ready."""
    held: float


class Scaler(Protocol):
    name: str

    def step(self, t: float, view: View) -> int:
        """The count wanted after time t (the current one for no change)."""
        ...


def _ceil(x: float) -> int:
    return math.ceil(x - 1e-9)


def _due(t: float, period: float, dt: float) -> bool:
    """True on the simulator step in which a `period` timer fires."""
    return math.floor((t + 1e-9) / period) != math.floor((t - dt + 1e-9) / period)


@dataclass
class Shoal:
    config: policy.Config
    dt: float
    tick_s: float = 1.0
    name: str = "shoal"
    pol: policy.Policy = field(init=False)

    def __post_init__(self) -> None:
        self.pol = policy.Policy(self.config)

    def step(self, t: float, view: View) -> int:
        if not _due(t, self.tick_s, self.dt):
            return view.current
        per = view.concurrency - view.held
        replicas = tuple(
            policy.ReplicaObservation(f"r{i}", policy.ReplicaState.READY, per / view.ready)
            for i in range(view.ready)
        ) + tuple(
            policy.ReplicaObservation(f"s{i}", policy.ReplicaState.STARTING, 0.0)
            for i in range(view.starting)
        )
        obs = policy.Observation(now=t, current=view.current, replicas=replicas, held=view.held)
        return self.pol.decide(obs).replicas


@dataclass
class Knative:
    target: float
    dt: float
    min_replicas: int = 0
    max_replicas: int = 1000
    name: str = "knative-kpa"
    stable_s: float = 60.0
    panic_s: float = 6.0
    tick_s: float = 2.0
    panic_threshold: float = 2.0
    max_up_rate: float = 1000.0
    max_down_rate: float = 2.0
    to_zero_grace_s: float = 30.0
    buckets: deque[tuple[float, float]] = field(default_factory=deque)
    _acc: list[float] = field(default_factory=list)
    panic_time: float | None = None
    max_panic_pods: int = 0
    zero_since: float | None = None

    def step(self, t: float, view: View) -> int:
        self._acc.append(view.concurrency)
        if _due(t, 1.0, self.dt):
            self.buckets.append((t, sum(self._acc) / len(self._acc)))
            self._acc.clear()
            while self.buckets and self.buckets[0][0] <= t - self.stable_s:
                self.buckets.popleft()
        if not _due(t, self.tick_s, self.dt) or not self.buckets:
            return view.current
        stable = sum(v for _, v in self.buckets) / len(self.buckets)
        recent = [v for at, v in self.buckets if at > t - self.panic_s]
        panic = sum(recent) / len(recent)
        ready = max(1, view.ready)
        up, down = _ceil(self.max_up_rate * ready), math.floor(ready / self.max_down_rate)
        dspc = min(max(_ceil(stable / self.target), down), up)
        dppc = min(max(_ceil(panic / self.target), down), up)
        over = dppc / ready >= self.panic_threshold
        if over:
            self.panic_time = t
        elif self.panic_time is not None and self.panic_time + self.stable_s <= t:
            self.panic_time, self.max_panic_pods = None, 0
        if self.panic_time is not None:
            self.max_panic_pods = max(self.max_panic_pods, dppc, dspc)
            want = self.max_panic_pods
        else:
            want = dspc
        if stable == 0 and panic == 0:
            # No traffic for a stable window: zero after the grace period.
            self.zero_since = t if self.zero_since is None else self.zero_since
            want = 0 if t - self.zero_since >= self.to_zero_grace_s else min(view.current, 1)
        else:
            self.zero_since = None
            want = max(want, 1)
        return min(max(want, self.min_replicas), self.max_replicas)


@dataclass
class RayServe:
    target: float
    dt: float
    min_replicas: int = 0
    max_replicas: int = 1000
    name: str = "ray-serve"
    record_s: float = 0.5
    push_s: float = 10.0
    look_back_s: float = 30.0
    tick_s: float = 0.1
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    records: deque[tuple[float, float]] = field(default_factory=deque)
    pushed: float = 0.0
    counter: int = 0

    def step(self, t: float, view: View) -> int:
        if _due(t, self.record_s, self.dt):
            self.records.append((t, view.concurrency))
            while self.records and self.records[0][0] <= t - self.look_back_s:
                self.records.popleft()
        if _due(t, self.push_s, self.dt) and self.records:
            self.pushed = sum(v for _, v in self.records) / len(self.records)
        if not _due(t, self.tick_s, self.dt):
            return view.current
        current = view.current
        if current == 0:
            # Cold-start fast path: any request at zero scales at once, bypassing the delays.
            if view.concurrency > 0:
                self.counter = 0
                return min(max(1, _ceil(view.concurrency / self.target)), self.max_replicas)
            return max(0, self.min_replicas)
        desired = min(max(_ceil(self.pushed / self.target), self.min_replicas), self.max_replicas)
        if desired > current:
            self.counter = max(self.counter, 0) + 1
            if self.counter > int(self.upscale_delay_s / self.tick_s):
                self.counter = 0
                return desired
        elif desired < current:
            self.counter = min(self.counter, 0) - 1
            if self.counter < -int(self.downscale_delay_s / self.tick_s):
                self.counter = 0
                # Never below 1 except the 1 -> 0 step (same delay by default).
                return desired if current == 1 or desired >= 1 else 1
        else:
            self.counter = 0
        return current


@dataclass
class HpaKeda:
    target: float
    dt: float
    min_replicas: int = 0
    max_replicas: int = 1000
    name: str = "hpa+keda"
    scrape_s: float = 15.0
    poll_s: float = 30.0
    sync_s: float = 15.0
    cooldown_s: float = 300.0
    stabilisation_s: float = 300.0
    tolerance: float = 0.1
    scraped: float = 0.0
    polled: float = 0.0
    last_active: float = -math.inf
    recommendations: deque[tuple[float, int]] = field(default_factory=deque)

    started: bool = False

    def step(self, t: float, view: View) -> int:
        current = view.current
        if not self.started:
            # Warmed up like the world: a sample in hand and a history at the current count.
            self.started, self.scraped, self.polled = True, view.concurrency, view.concurrency
            self.recommendations.append((t, current))
            self.last_active = t
        if _due(t, self.scrape_s, self.dt):
            self.scraped = view.concurrency
        if _due(t, self.poll_s, self.dt):
            self.polled = self.scraped
            if self.polled > 0:
                self.last_active = t
            if current == 0 and self.polled > 0:
                return 1  # KEDA's activation
            if current > 0 and self.min_replicas == 0 and t - self.last_active >= self.cooldown_s:
                self.recommendations.clear()
                return 0
        if current == 0 or not _due(t, self.sync_s, self.dt):
            return current
        ratio = self.polled / (self.target * current)
        want = current if abs(ratio - 1) <= self.tolerance else _ceil(self.polled / self.target)
        want = min(max(want, 1, self.min_replicas), self.max_replicas)
        self.recommendations.append((t, want))
        while self.recommendations and self.recommendations[0][0] <= t - self.stabilisation_s:
            self.recommendations.popleft()
        if want > current:
            return min(want, max(current + 4, 2 * current))
        return min(current, max(r for _, r in self.recommendations))
