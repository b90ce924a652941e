"""The autoscaling simulator on short traces: Shoal's policy and the peers' timings show up
in the numbers as their sources say they should, and no request is lost by the model."""

from __future__ import annotations

import pytest

from bench.autoscale import __main__ as cli
from bench.autoscale import peers, sim, traces


def _run(trace: traces.Trace, world: sim.World) -> dict[str, sim.Result]:
    return {r.scaler: r for r in (sim.simulate(trace, m(), world) for m in cli.scalers(world))}


def test_step_trace_reaction_times_follow_each_algorithm() -> None:
    world = sim.World(cold_start_s=5.0)
    results = _run(traces.step(240, at=60), world)
    shoal, kpa, ray, hpa = (results[n] for n in ("shoal", "knative-kpa", "ray-serve", "hpa+keda"))
    assert shoal.decision_s is not None
    assert shoal.decision_s <= 1.0
    assert shoal.decisions_to_capacity == 1
    assert shoal.time_to_capacity_s == pytest.approx(shoal.decision_s + 5.0, abs=0.11)
    assert kpa.decision_s is not None
    assert 0 < kpa.decision_s <= 2.0 + 1e-6
    assert ray.decision_s is not None
    assert ray.decision_s >= 30.0
    assert hpa.decision_s is not None
    assert hpa.decision_s >= shoal.decision_s
    assert shoal.over_slo < min(kpa.over_slo, ray.over_slo, hpa.over_slo)
    # The same arrivals for every algorithm, and every one is served by the end.
    assert len({round(r.requests) for r in results.values()}) == 1


def test_bursty_trace_scales_from_zero_and_back() -> None:
    world = sim.World(cold_start_s=3.0)
    trace = traces.bursty(300, period=120, on=20, first=60)
    shoal = sim.simulate(trace, cli.scalers(world)[0](), world)
    assert shoal.first_wait_s is not None
    assert shoal.first_wait_s <= 3.0 + 1.0
    assert shoal.scale_events >= 2 * len(trace.events)  # up from zero and back each time


def test_the_report_has_a_row_per_trace_and_algorithm(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--scale", "0.05"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(traces.all_traces()) * 4
    assert "Goals (issue 17):" in out


def test_due_fires_once_per_period() -> None:
    fired = [k for k in range(1, 101) if peers._due(k * 0.1, 2.0, 0.1)]
    assert fired == [20, 40, 60, 80, 100]
