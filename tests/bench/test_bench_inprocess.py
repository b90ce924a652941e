"""bench/inprocess.py runs every case through the real protocol classes and apps and reports a
CPU cost per request for each (tiny sizes: a smoke test, not a measurement)."""

from __future__ import annotations

import uvloop

from bench import inprocess


def test_every_case_is_driven_and_costs_some_cpu() -> None:
    result = uvloop.run(inprocess.run(rounds=1, requests=128))
    assert set(result) == {
        "floor (plain httptools)",
        "shoal V1 (plain httptools)",
        "shoal V1 (guarded, as served)",
        "shoal V2 (guarded, as served)",
    }
    for name, rounds in result.items():
        assert len(rounds) == 1, name
        assert 0 < rounds[0] < 100_000, (name, rounds)  # microseconds per request
