"""examples/adder.py (Ray Serve's batching tutorial) under `shoal serve`."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx

from shoal.runtime.testing import ServeProcess

ROOT = Path(__file__).resolve().parents[2]


def batch_stats(metrics: str) -> tuple[float, float]:
    count = re.search(r'shoal_batch_size_count\{model="adder"\} (\S+)', metrics)
    total = re.search(r'shoal_batch_size_sum\{model="adder"\} (\S+)', metrics)
    assert count is not None
    assert total is not None
    return float(count.group(1)), float(total.group(1))


async def test_adder_over_v1_and_v2_with_the_batch_size_from_the_flag() -> None:
    # --max-batch-size beats the decorator's 8: one request of 8 rows runs as 2 batches of 4.
    with ServeProcess("examples.adder:Adder", "--max-batch-size", "4", cwd=ROOT) as proc:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            r = await client.post("/v1/models/adder:predict", json={"instances": list(range(8))})
            assert r.json() == {"predictions": list(range(1, 9))}
            assert batch_stats((await client.get("/metrics")).text) == (2.0, 8.0)

            body = {
                "inputs": [{"name": "n", "shape": [3], "datatype": "INT32", "data": [10, 20, 30]}]
            }
            r = await client.post("/v2/models/adder/infer", json=body)
            out = r.json()["outputs"][0]
            assert (out["shape"], out["data"]) == ([3], [11, 21, 31])

            answers = await asyncio.gather(
                *(
                    client.post("/v1/models/adder:predict", json={"instances": [i]})
                    for i in range(20)
                )
            )
            assert [a.json()["predictions"] for a in answers] == [[i + 1] for i in range(20)]


async def test_rows_out_of_the_int64_range_are_400_and_fail_no_one_else() -> None:
    big = 2**63 - 1  # + 1 used to wrap around to -2**63
    with ServeProcess("examples.adder:Adder", cwd=ROOT) as proc:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            bad_rows: list[object] = [big, -(2**64), "a", None, [1, 2], True]
            bad = [
                client.post("/v1/models/adder:predict", json={"instances": [row]})
                for row in bad_rows
            ]
            good = [
                client.post("/v1/models/adder:predict", json={"instances": [i]}) for i in range(6)
            ]
            answers = await asyncio.gather(*bad, *good)
            fits = await client.post("/v1/models/adder:predict", json={"instances": [big - 1]})
    for answer in answers[: len(bad_rows)]:
        assert answer.status_code == 400, answer.text
    assert "out of the int64 range" in answers[0].json()["error"]
    assert "adder takes numbers, got 'a'" in answers[2].json()["error"]
    good_answers = [a.json() for a in answers[len(bad_rows) :]]
    assert good_answers == [{"predictions": [i + 1]} for i in range(6)]
    assert fits.json() == {"predictions": [big]}  # the largest sum that fits is still answered
