"""The autoscaling policy: observations -> desired replicas and the reason, nothing else.

Pure: no I/O, no wall clock (every observation carries its own `now`), so the same trace gives
the same trajectory in a unit test, in the simulator (bench/autoscale) and in the operator.

Demand is queued plus in-flight requests summed over the model's replicas, plus what the
gateways hold for it while it has no ready replica. It is a level, not a rate: a queue of N
requests needs N / target replicas now, so a burst is answered in one decision
(`ceil(demand / target)`), not one replica per tick (KubeAI) or a doubling per period (HPA).

Windows (after Knative's KPA, on queue depth):
- the panic window (short) drives scale-up; a burst (the latest sample alone asks for at least
  `panic_threshold` times the current count) scales at once and starts a panic: while panicking
  the count never goes down, and the panic ends after a stable window without a burst;
- scale-down: the count goes down only when every recommendation (from the panic window) of
  the last `scale_down_delay_s` was below it by more than the tolerance, and then in one step
  to what the latest panic window needs;
- to zero only after `scale_to_zero_delay_s` with no demand at all; from zero on the first
  held request.
Replicas still starting count as capacity that is coming: the count they belong to is the
scale target, and while some start it grows again only for a new burst, not for the backlog
that piles up while a slow model loads (it drains once they are ready).

After a restart the state is empty: scale-up works from the first observation (it needs only
the latest samples), scale-down waits until one full delay has been observed (so a restart
neither flaps down nor freezes, KubeAI#382), and the current count is the starting point.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum


class ReplicaState(Enum):
    READY = "ready"
    STARTING = "starting"
    TERMINATING = "terminating"


@dataclass(frozen=True)
class ReplicaObservation:
    name: str
    state: ReplicaState
    load: float | None
    """Queued + in-flight requests; None when its metrics could not be read."""


@dataclass(frozen=True)
class Observation:
    now: float
    """Seconds on any monotonic clock (the caller's)."""
    current: int
    """The scale target now (spec.replicas): ready + starting replicas that are wanted."""
    replicas: tuple[ReplicaObservation, ...] = ()
    held: float = 0.0
    """Requests the gateways hold for this model (summed over gateway pods)."""


@dataclass(frozen=True)
class Config:
    min_replicas: int = 1
    max_replicas: int = 8
    target: float = 4.0
    """Queued + in-flight requests per replica to aim for."""
    scale_down_delay_s: float = 60.0
    scale_to_zero_delay_s: float = 300.0
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0
    tolerance: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError("need 0 <= min_replicas <= max_replicas, max_replicas >= 1")
        if self.target <= 0 or self.panic_threshold <= 1 or not 0 <= self.tolerance < 1:
            raise ValueError("need target > 0, panic_threshold > 1, 0 <= tolerance < 1")
        if not 0 < self.panic_window_s <= self.stable_window_s:
            raise ValueError("need 0 < panic_window_s <= stable_window_s")

    @classmethod
    def windows_for(cls, scale_down_delay_s: float, **kw: float | int) -> Config:
        """The derived windows the operator uses: the stable window is the scale-down delay
        clamped to 6..60 s, the panic window a tenth of it but at least 1 s."""
        stable = min(60.0, max(6.0, scale_down_delay_s))
        return cls(
            scale_down_delay_s=scale_down_delay_s,
            stable_window_s=stable,
            panic_window_s=max(1.0, stable / 10),
            **kw,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    demand: float
    panicking: bool

    def changed(self, current: int) -> bool:
        return self.replicas != current


@dataclass
class State:
    """What the policy remembers between decisions (rebuilt empty after a restart)."""

    samples: deque[tuple[float, float, float]] = field(default_factory=deque)
    """(t, demand with unknown replicas as 0, demand with unknown replicas at target)."""
    recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    """(t, scale-down recommendation) over the last scale_down_delay_s."""
    started_at: float | None = None
    last_demand_at: float | None = None
    panic_until: float | None = None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


class Policy:
    """One model's policy: `decide(obs)` once per observation (ideally about once a second)."""

    def __init__(self, config: Config, state: State | None = None) -> None:
        self.config = config
        self.state = state or State()

    def _replicas_for(self, demand: float) -> int:
        # A float tolerance so that exactly target x N never reads as N + 1.
        return math.ceil(demand / self.config.target - 1e-9)

    def _clamp(self, n: int) -> int:
        return min(max(n, self.config.min_replicas), self.config.max_replicas)

    def _record(self, obs: Observation) -> tuple[float, float, int]:
        c, st = self.config, self.state
        live = [r for r in obs.replicas if r.state is not ReplicaState.TERMINATING]
        known = sum(r.load for r in live if r.load is not None)
        unknown = sum(1 for r in live if r.load is None)
        low = known + obs.held
        # HPA's rule for missing metrics: they count as 0 for scale-up and as the target for
        # scale-down, so a replica that does not answer never causes a move either way.
        high = low + unknown * c.target
        if st.started_at is None:
            st.started_at = obs.now
        if low > 0 or unknown:
            st.last_demand_at = obs.now
        elif st.last_demand_at is None:
            st.last_demand_at = obs.now  # idle counts from the first observation
        st.samples.append((obs.now, low, high))
        while st.samples and st.samples[0][0] <= obs.now - c.stable_window_s:
            st.samples.popleft()
        starting = sum(1 for r in live if r.state is ReplicaState.STARTING)
        return low, high, starting

    def decide(self, obs: Observation) -> Decision:
        c, st = self.config, self.state
        now, current = obs.now, obs.current
        low, high, starting = self._record(obs)
        panic_avg = _mean([s[1] for s in st.samples if s[0] > now - c.panic_window_s])
        # Scale-down looks at the highest sample of the panic window: a mean would let noise
        # peaks that the lower count cannot absorb pull it down and push it straight back up.
        recent_high = max((s[2] for s in st.samples if s[0] > now - c.panic_window_s), default=0.0)
        panicking = st.panic_until is not None and now < st.panic_until

        def decision(n: int, reason: str) -> Decision:
            if n > current:  # a new count holds for one delay before it may go down again
                st.recommendations.append((now, n))
            return Decision(n, reason, low, st.panic_until is not None and now < st.panic_until)

        # From zero: the first held request is enough.
        if current == 0:
            if low > 0:
                n = self._clamp(max(1, self._replicas_for(low)))
                st.panic_until = now + c.stable_window_s
                return decision(n, f"from zero: demand {low:g}")
            if c.min_replicas > 0:
                return decision(c.min_replicas, f"raised to minReplicas {c.min_replicas}")
            return decision(0, "idle at zero")

        # Burst: the latest sample alone asks for panic_threshold x the current count.
        burst = self._replicas_for(low)
        if burst >= c.panic_threshold * current:
            st.panic_until = now + c.stable_window_s
            n = self._clamp(burst)
            if n > current:
                return decision(n, f"burst: demand {low:g} needs {burst} (target {c.target:g})")
            return decision(current, f"burst: at maxReplicas {c.max_replicas}")

        # Scale-up over the panic window, beyond the tolerance band; while replicas start,
        # their count is capacity that is coming (only a burst above adds to it).
        up = self._replicas_for(panic_avg)
        if up > current and panic_avg > current * c.target * (1 + c.tolerance) and not starting:
            n = self._clamp(up)
            if n > current:
                return decision(n, f"up: demand {panic_avg:.3g} over {c.panic_window_s:g}s")

        # Scale-down recommendations, kept for the delay (never below one: zero is below).
        rec = self._clamp(max(1, self._replicas_for(recent_high)))
        if recent_high > current * c.target * (1 - c.tolerance):
            rec = max(rec, current)  # inside the tolerance band: hold
        st.recommendations.append((now, rec))
        while st.recommendations and st.recommendations[0][0] < now - c.scale_down_delay_s:
            st.recommendations.popleft()

        if current < c.min_replicas or current > c.max_replicas:
            n = self._clamp(current)
            return decision(n, f"bounds: {c.min_replicas}..{c.max_replicas}")
        if panicking:
            return decision(current, "panic: holding")
        observed_for = now - (st.started_at if st.started_at is not None else now)
        if observed_for < c.scale_down_delay_s:
            return decision(current, "warming up: no scale-down before one delay is observed")
        idle_for = now - (st.last_demand_at if st.last_demand_at is not None else now)
        if c.min_replicas == 0 and idle_for >= c.scale_to_zero_delay_s and high == 0:
            return decision(0, f"to zero: idle for {idle_for:.0f}s")
        if max(r for _, r in st.recommendations) < current:
            # Below for the whole delay: go in one step to what the latest panic window needs.
            n = max(r for t, r in st.recommendations if t > now - c.panic_window_s)
            return decision(
                n, f"down: demand {recent_high:.3g} below target for {c.scale_down_delay_s:g}s"
            )
        return decision(current, "steady")
