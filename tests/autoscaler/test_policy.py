"""The policy on deterministic traces: a fake clock (every observation carries `now`), a tiny
world where ordered replicas become ready after a load time and demand spreads over ready ones,
and assertions on the exact trajectory, reaction time, bounds and direction changes."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from shoal.operator.autoscaler.policy import (
    Config,
    Decision,
    Observation,
    Policy,
    ReplicaObservation,
    ReplicaState,
)

READY, STARTING = ReplicaState.READY, ReplicaState.STARTING


def obs(now: float, current: int, loads: list[float | None], held: float = 0.0) -> Observation:
    replicas = tuple(ReplicaObservation(f"r{i}", READY, x) for i, x in enumerate(loads))
    return Observation(now=now, current=current, replicas=replicas, held=held)


@dataclass
class World:
    """Replicas ordered by the policy, ready `load_s` after the order; demand (queued +
    in-flight, a level) spread evenly over ready replicas, held by the gateway when none is."""

    policy: Policy
    load_s: float = 0.0
    tick: float = 1.0
    current: int = 1
    ready_at: list[float] = field(default_factory=list)
    trajectory: list[tuple[float, int]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.initial = self.current
        self.ready_at = [-math.inf] * self.current

    def run(self, demand: Callable[[float], float], start: float, end: float) -> None:
        t = start
        while t <= end + 1e-9:
            d = demand(t)
            ready = sum(1 for r in self.ready_at if r <= t)
            starting = len(self.ready_at) - ready
            replicas = [ReplicaObservation(f"r{i}", READY, d / ready) for i in range(ready)]
            replicas += [ReplicaObservation(f"s{i}", STARTING, 0.0) for i in range(starting)]
            held = d if ready == 0 else 0.0
            o = Observation(now=t, current=self.current, replicas=tuple(replicas), held=held)
            dec = self.policy.decide(o)
            self.decisions.append(dec)
            if dec.replicas > self.current:
                self.ready_at += [t + self.load_s] * (dec.replicas - self.current)
            elif dec.replicas < self.current:
                self.ready_at = sorted(self.ready_at)[: dec.replicas]
            if dec.replicas != self.current:
                self.trajectory.append((t, dec.replicas))
            self.current = dec.replicas
            t = round(t + self.tick, 6)

    def reversals(self) -> list[float]:
        """Times at which the count moved the other way from its previous move."""
        counts = [self.initial, *(n for _, n in self.trajectory)]
        ups = [b > a for a, b in itertools.pairwise(counts)]
        times = [t for t, _ in self.trajectory]
        return [times[i + 1] for i, (a, b) in enumerate(itertools.pairwise(ups)) if a != b]

    def direction_changes(self) -> int:
        return len(self.reversals())


def cfg(**kw: float | int) -> Config:
    base: dict[str, float | int] = dict(
        min_replicas=1,
        max_replicas=20,
        target=4.0,
        scale_down_delay_s=60.0,
        scale_to_zero_delay_s=120.0,
        stable_window_s=60.0,
        panic_window_s=6.0,
    )
    base.update(kw)
    return Config(**base)  # type: ignore[arg-type]


def test_step_reaches_the_needed_count_in_one_decision() -> None:
    w = World(Policy(cfg()))
    w.run(lambda t: 40.0 if t >= 10 else 3.0, 0, 30)
    assert w.trajectory == [(10, 10)]
    assert w.decisions[10].reason.startswith("burst")


def test_from_zero_on_the_first_held_request() -> None:
    p = Policy(cfg(min_replicas=0))
    assert p.decide(obs(0, 0, [])).replicas == 0
    d = p.decide(Observation(now=1, current=0, held=1))
    assert (d.replicas, d.reason) == (1, "from zero: demand 1")
    p2 = Policy(cfg(min_replicas=0, max_replicas=8))
    assert p2.decide(Observation(now=1, current=0, held=50)).replicas == 8


def test_idle_to_zero_then_burst_from_zero() -> None:
    w = World(Policy(cfg(min_replicas=0, scale_to_zero_delay_s=120)), current=2)
    w.run(lambda t: 0.0, 0, 200)
    assert w.trajectory == [(60, 1), (120, 0)]
    w.run(lambda t: 10.0, 201, 205)
    assert w.trajectory[-1] == (201, 3)


def test_spike_holds_through_the_panic_then_steps_down_once() -> None:
    w = World(Policy(cfg()), current=2)
    w.run(lambda t: 80.0 if 20 <= t < 25 else 6.0, 0, 300)
    assert w.trajectory[0] == (20, 20)
    # Never down while panicking (until 80, 60 s after the burst decision), nor within the
    # delay after the last panic window that needed 20 (the spike's last sample at 24 is in
    # it until 30): down at 90, in one step.
    assert w.trajectory[1:] == [(90, 2)]
    assert w.direction_changes() == 1


def test_ramp_tracks_demand_within_the_panic_window() -> None:
    w = World(Policy(cfg(max_replicas=50)))
    w.run(lambda t: t * 0.5, 0, 240)  # 0 -> 120 queued + in-flight over 4 minutes
    counts = [n for _, n in w.trajectory]
    assert counts == sorted(counts), "a rising load never scales down"
    for t in range(20, 241, 10):
        n = max([1] + [n for at, n in w.trajectory if at <= t])
        lag = 6.0 + 1.0  # the panic window plus one tick
        assert n * 4.0 * 1.1 >= (t - lag) * 0.5, f"behind at t={t}: {n}"


def test_diurnal_stays_in_bounds_and_changes_direction_rarely() -> None:
    w = World(Policy(cfg(min_replicas=2, max_replicas=12)))
    w.run(lambda t: 24 + 20 * math.sin(2 * math.pi * t / 1200), 0, 2400)
    assert all(2 <= n <= 12 for _, n in w.trajectory)
    # Two periods: up and down twice each, so at most 4 changes of direction.
    assert 1 <= w.direction_changes() <= 4


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_noisy_steady_load_at_most_one_change_of_direction_per_stable_window(seed: int) -> None:
    rng = random.Random(seed)
    w = World(Policy(cfg()), current=4)
    w.run(lambda t: max(0.0, rng.gauss(14.0, 2.0)), 0, 1200)
    # Per window, not only on average: no two changes of direction within 60 s.
    gaps = [b - a for a, b in itertools.pairwise(w.reversals())]
    assert all(g >= 60 for g in gaps), w.trajectory
    assert all(4 <= n <= 6 for _, n in w.trajectory)


def test_starting_replicas_are_capacity_that_is_coming() -> None:
    # A slow model (30 s to load): the backlog grows while they start, by less than 2x.
    w = World(Policy(cfg(max_replicas=40)), load_s=30)
    w.run(lambda t: 0.0 if t < 5 else 40.0 + (t - 5) * 1.0, 0, 34)
    assert w.trajectory == [(5, 10)], "no second order while the first ten load"


def test_restart_mid_burst_neither_flaps_nor_freezes() -> None:
    before = World(Policy(cfg()), current=1)
    before.run(lambda t: 60.0 if t >= 5 else 2.0, 0, 30)
    assert before.current == 15
    # A new operator process: fresh policy state, the same count from the API.
    after = World(Policy(cfg()), current=before.current)
    after.ready_at = list(before.ready_at)
    after.run(lambda t: 8.0, 31, 200)
    # Demand fell as it restarted: held for one full delay after the restart (no flap, as a
    # fresh state with no history would otherwise scale down at once), then down to 2 in one
    # step (no freeze).
    assert after.trajectory == [(91, 2)]
    # Scale-up right after a restart needs no history.
    fresh = Policy(cfg())
    assert fresh.decide(obs(0, 2, [40.0, 40.0])).replicas == 20


def test_unknown_replicas_move_nothing() -> None:
    p = Policy(cfg(scale_down_delay_s=0, stable_window_s=6, panic_window_s=1))
    for t in range(10):
        d = p.decide(obs(t, 3, [0.0, 0.0, None]))
    # Two idle and one silent replica: the silent one counts as at target for scale-down.
    assert d.replicas == 1 or d.replicas == 3
    assert d.replicas == 1  # ceil((0 + 0 + 4) / 4): it keeps one replica's worth
    q = Policy(cfg())
    assert q.decide(obs(0, 2, [4.0, None])).replicas == 2, "no scale-up from a silent replica"


@pytest.mark.parametrize(
    ("per_replica", "expected"),
    [(4.0, 4), (4.3, 4), (4.5, 5), (7.9, 8), (8.0, 8)],
)
def test_tolerance_band(per_replica: float, expected: int) -> None:
    p = Policy(cfg())
    d = Decision(0, "", 0, False)
    for t in range(8):
        d = p.decide(obs(t, 4, [per_replica] * 4))
    assert d.replicas == expected


def test_bounds() -> None:
    assert Policy(cfg(max_replicas=5)).decide(obs(0, 2, [100.0, 100.0])).replicas == 5
    assert Policy(cfg(min_replicas=3)).decide(obs(0, 0, [])).replicas == 3
    assert Policy(cfg(max_replicas=5)).decide(obs(0, 7, [1.0] * 7)).replicas == 5
    assert Policy(cfg(min_replicas=3)).decide(obs(0, 2, [1.0, 1.0])).replicas == 3


@pytest.mark.parametrize(
    "kw",
    [
        {"min_replicas": 3, "max_replicas": 2},
        {"max_replicas": 0, "min_replicas": 0},
        {"target": 0},
        {"panic_threshold": 1.0},
        {"tolerance": 1.0},
        {"panic_window_s": 120.0},
    ],
)
def test_config_refuses_nonsense(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="need"):
        cfg(**kw)


def test_windows_follow_the_scale_down_delay() -> None:
    assert (Config.windows_for(0).stable_window_s, Config.windows_for(0).panic_window_s) == (6, 1)
    c = Config.windows_for(300, min_replicas=0)
    assert (c.stable_window_s, c.panic_window_s, c.min_replicas) == (60, 6, 0)
