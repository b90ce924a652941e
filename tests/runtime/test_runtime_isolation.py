"""One bad row among good ones, through a real `shoal serve` on loopback: the bad row's request
gets its 400 and every request batched with it gets its answer (runtime/isolation.py)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.runtime.testing import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
# A batch function that raises for the whole batch on one bad row, as numpy does.
RAISING = "vector-adder=tests/runtime/sample_models.py:VectorAdder"
# One batch takes everything sent at once: the wait is long, the batch large.
# Ray's hard wait, so rows sent together share a batch (the adaptive default would send an idle
# model's first row alone)
TOGETHER = ("--max-batch-size", "256", "--batch-wait-timeout-s", "0.5", "--batch-wait-mode", "hard")


def metric(text: str, name: str, model: str) -> float:
    m = re.search(rf'^{name}\{{model="{model}"\}} (\S+)$', text, re.M)
    assert m is not None, f"{name} for {model} not in /metrics"
    return float(m.group(1))


async def predict(
    client: httpx.AsyncClient, model: str, instances: list[Any], rid: str | None = None
) -> httpx.Response:
    headers = {"x-request-id": rid} if rid else {}
    return await client.post(
        f"/v1/models/{model}:predict", json={"instances": instances}, headers=headers
    )


@pytest.mark.parametrize(
    ("target", "model", "prefix"),
    [
        ("examples.adder:Adder", "adder", "Adder.__call__: adder takes numbers"),  # checks rows
        (RAISING, "vector-adder", "VectorAdder.__call__: "),  # raises: the runtime isolates
    ],
)
async def test_bad_rows_are_400_and_their_batch_mates_succeed(
    target: str, model: str, prefix: str
) -> None:
    bad: list[list[Any]] = [["a"], [None], [{"n": 1}]]
    with ServeProcess(target, *TOGETHER, cwd=ROOT) as proc:
        async with httpx.AsyncClient(base_url=proc.url, timeout=60) as client:
            good = [predict(client, model, [i]) for i in range(200)]
            rogue = [predict(client, model, rows) for rows in bad]
            answers = await asyncio.gather(*good[:100], *rogue, *good[100:])
            metrics = (await client.get("/metrics")).text
    innocent = answers[:100] + answers[103:]
    assert [a.status_code for a in innocent] == [200] * 200
    assert [a.json()["predictions"] for a in innocent] == [[i + 1] for i in range(200)]
    for a in answers[100:103]:
        assert a.status_code == 400, a.text
        assert a.json()["error"].startswith(prefix), a.text
    # They did share batches with the bad rows (203 requests in far fewer batches).
    assert metric(metrics, "shoal_batch_size_count", model) < 203 / 2
    if model == "vector-adder":
        assert metric(metrics, "shoal_batch_retries_total", model) > 0


async def test_one_bad_row_in_a_batch_of_n_gives_n_answers_and_one_400() -> None:
    n = 15
    wait = ("--batch-wait-timeout-s", "2")  # time for all 16 to arrive on a loaded machine
    with ServeProcess(RAISING, *TOGETHER, *wait, cwd=ROOT) as proc:
        async with httpx.AsyncClient(base_url=proc.url, timeout=60) as client:
            sent = [predict(client, "vector-adder", [i]) for i in range(n)]
            sent.insert(7, predict(client, "vector-adder", ["seven"], rid="the-bad-row"))
            answers = await asyncio.gather(*sent)
            metrics = (await client.get("/metrics")).text
        logs = proc.logs()
    codes = [a.status_code for a in answers]
    assert codes == [200] * 7 + [400] + [200] * (n - 7)
    # All n + 1 rows went in one batch: one batch of 16 in the histogram
    assert metric(metrics, "shoal_batch_size_count", "vector-adder") == 1
    assert metric(metrics, "shoal_batch_size_sum", "vector-adder") == n + 1
    # 16 rows, one bad: two calls a level for log2(16) levels
    assert metric(metrics, "shoal_batch_retries_total", "vector-adder") == 8
    # the first isolation is logged, naming the request of the row at fault
    line = next(ln for ln in logs.splitlines() if "a batch of 16 rows raised" in ln)
    assert "UFuncTypeError" in line
    assert line.endswith("[request_id=the-bad-row]"), line
