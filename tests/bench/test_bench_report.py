"""The RESULTS.md table from a hand-made run document: medians over rounds, ratios to Ray Serve,
KServe and the floor, share of the model-bound limit, the gateway's added latency, goal lines."""

from __future__ import annotations

from typing import Any

from bench import report


def _row(
    server: str, protocol: str, rps: float, p50: float, p99: float, **kw: Any
) -> dict[str, Any]:
    row = {
        "workload": kw.pop("workload", "W1"),
        "server": server,
        "protocol": protocol,
        "connections": kw.pop("connections", 64),
        "rps": rps,
        "p50_ms": p50,
        "p90_ms": p99,
        "p99_ms": p99,
        "mean_ms": p50,
        "mean_batch": kw.pop("mean_batch", 32.0),
        "errors": 0,
        "cpu_ms_per_request": kw.pop("cpu", 0.1),
        "front_cpu_ms_per_request": kw.pop("front", 0.0),
        "server_reported_mean_batch": None,
        "generator": "wrk",
        "round": kw.pop("round", 0),
    }
    assert not kw
    return row


def _doc(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "started": "2026-11-27T07:00:00+00:00",
        "command": "scripts/bench",
        "notes": "",
        "machine": {
            "commit": "abc",
            "cpus": 2,
            "cpu": "x",
            "loadavg_start": [1.0, 1, 1],
            "loadavg_end": [1.0, 1, 1],
            "versions": {"python": "3.11"},
        },
        "knobs": {"max_batch_size": 32, "batch_wait_timeout_s": 0.005, "torch_threads": 1},
        "load": {"connections": 64, "warmup_s": 3, "duration_s": 10, "wrk_threads": 1},
        "moderate_connections": 4,
        "rounds": 1,
        "workloads": {"W1": {"what": "w1"}, "W2": {"what": "w2"}},
        "limits": {
            "W1": {"rows_per_s": 100000.0, "cpu_ms_per_row": 0.012},
            "W2": {"rows_per_s": 4000.0},
        },
        "summary": report.summarize(results),
        "results": results,
        "failures": [],
    }


def test_summarize_takes_medians_over_rounds() -> None:
    rows = [_row("floor", "v1", x, x / 100, x / 10, round=i) for i, x in enumerate([300, 100, 200])]
    (s,) = report.summarize(rows)
    assert (s["rps"], s["p50_ms"], s["p99_ms"]) == (200, 2.0, 20.0)
    assert (s["rps_min"], s["rps_max"], s["rounds"]) == (100, 300, 3)


def test_table_ratios_limit_share_gateway_and_goals() -> None:
    results = [
        _row("floor", "v1", 12000, 4.0, 9.0, cpu=0.05),
        _row("shoal", "v2", 11000, 5.0, 10.0, cpu=0.06),
        _row("shoal", "v1", 10000, 5.0, 12.0),
        _row("shoal-gateway", "v2", 6000, 9.0, 15.0),
        _row("shoal", "v2", 800, 5.5, 7.0, connections=4),
        _row("shoal-gateway", "v2", 700, 6.0, 9.5, connections=4),
        _row("kserve", "v1", 1000, 60.0, 90.0, mean_batch=1.0),
        _row("ray-serve", "v1", 200, 300.0, 500.0, mean_batch=12.0, cpu=3.0),
        _row("shoal", "v2", 3800, 15.0, 30.0, workload="W2"),
    ]
    md = report.markdown(_doc(results))
    # shoal V2 on W1: 11000/200 = 55x Ray, 11x KServe, 0.9x floor, 11% of the limit, Ray's CPU
    # per request is 3.0/0.06 = 50x Shoal's, the model's 0.012 ms is 20% of Shoal's 0.06 ms.
    assert (
        "| shoal | V2 | 11,000 | 5.00 | 10.00 | 0 | 32.0 | 0.060 | 55.0x | 11.0x | 0.9x | 11% "
        "| 50.0x | 20% |" in md
    )
    assert "- W1 Shoal V2 vs Ray Serve: 55.0x (goal >= 50x), p99 10.0 ms (goal < 20 ms): met" in md
    assert "- W1 Shoal V1 vs Ray Serve: 50.0x (goal >= 50x), p99 12.0 ms (goal < 20 ms): met" in md
    assert "- W1 through the gateway V2 vs Ray Serve: 30.0x (goal >= 25x): met" in md
    assert "- W2 Shoal V2: 95% of the model-bound limit (goal >= 90%): met" in md
    # Added latency at 4 clients: +0.50 ms p50, +2.50 ms p99: both under the goal.
    assert "| W1 | V2 | 4 | 800 | 700 | 5.50 | 6.00 | +0.50 | 7.00 | 9.50 | +2.50 |" in md
    assert "p50 +0.50 ms (goal < 1 ms), p99 +2.50 ms (goal < 3 ms): met" in md


def test_issue_16_goals_are_judged_within_the_run() -> None:
    results = [
        _row("floor", "v1", 12000, 4.0, 9.0, cpu=0.05),
        _row("shoal", "v2", 11000, 5.0, 10.0, cpu=0.06),
        _row("shoal", "v1", 10000, 5.0, 12.0, cpu=0.05),
        _row("shoal-gateway", "v2", 6000, 9.0, 15.0, cpu=0.2, front=0.08),
        _row("floor", "v1", 4000, 4.0, 9.0, workload="W2"),
        _row("shoal", "v2", 3800, 15.0, 30.0, workload="W2"),
    ]
    md = report.markdown(_doc(results))
    assert "- W1 Shoal V2 / V1 req/s: 1.10 (goal >= 0.95): met" in md
    # 11000/12000 = 0.92 and p99 exactly +1 ms: met; its CPU 0.06/0.05 = 1.2: missed
    assert (
        "- W1 Shoal V2 / floor req/s: 0.92 (goal >= 0.9), p99 +1.00 ms vs the floor's "
        "(goal <= +1 ms): met" in md
    )
    assert "- W1 Shoal V2 server CPU per request / floor's: 1.20 (goal <= 1.15): MISSED" in md
    assert "- W1 Shoal V1 / floor req/s: 0.83 (goal >= 0.9), p99 +3.00 ms" in md
    assert "- W1 Shoal V1 server CPU per request / floor's: 1.00 (goal <= 1.15): met" in md
    assert "- W2 Shoal V2 / floor req/s: 0.95 (goal >= 0.9): met" in md
    assert (
        "- W1 through the gateway / direct, V2 at 64 clients: 0.55 (goal >= 0.8), "
        "the gateway's own CPU 0.080 ms/req: MISSED" in md
    )
    assert "| W1 | V2 | 64 | 11,000 | 6,000 |" in md
    assert "| +5.00 | 0.080 |" in md


def test_missed_goal_and_failures_are_reported() -> None:
    results = [
        _row("shoal", "v2", 1000, 5.0, 25.0),
        _row("ray-serve", "v1", 200, 300.0, 500.0),
    ]
    doc = _doc(results)
    doc["failures"] = [{"workload": "W1", "peer": "kserve", "error": "kserve exited with 1\nmore"}]
    md = report.markdown(doc)
    assert (
        "- W1 Shoal V2 vs Ray Serve: 5.0x (goal >= 50x), p99 25.0 ms (goal < 20 ms): MISSED" in md
    )
    assert "- W1 kserve: kserve exited with 1\n" in md
