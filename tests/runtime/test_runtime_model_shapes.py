"""Every way of writing a model either works fully or is refused with a message that shows the
way that works: a batched helper method awaited from `__call__` (Ray Serve's tutorial shape),
a plain-def `__call__` over one, and a plain def that returns a coroutine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from shoal.runtime.testing import ServeProcess, batch_stats

ROOT = Path(__file__).resolve().parents[2]
MODELS = "tests/runtime/sample_models.py"


async def test_a_batched_helper_gets_the_flags_the_metrics_and_the_log() -> None:
    # The decorator says 8; the flag's 3 wins: 6 rows at once are 2 batches of 3.
    args = (f"h={MODELS}:HelperBatched", "--max-batch-size", "3")
    with ServeProcess(*args, cwd=ROOT) as proc:
        async with httpx.AsyncClient(base_url=proc.url, timeout=60) as client:
            r = await client.post("/v1/models/h:predict", json={"instances": list(range(6))})
            assert r.status_code == 200, r.text
            assert r.json() == {"predictions": [0, 2, 4, 6, 8, 10]}
            assert batch_stats((await client.get("/metrics")).text, "h") == (2.0, 6.0)
            answers = await asyncio.gather(
                *(client.post("/v1/models/h:predict", json={"instances": [i]}) for i in range(3))
            )
            assert [a.json()["predictions"] for a in answers] == [[0], [2], [4]]
            assert batch_stats((await client.get("/metrics")).text, "h") == (3.0, 9.0)
        assert "model 'h' ready on cpu (batched: max_batch_size=3 " in proc.logs()


def test_a_plain_def_call_over_a_batched_helper_is_refused_at_load() -> None:
    with pytest.raises(RuntimeError, match="exited with 1") as info:
        ServeProcess(f"s={MODELS}:SyncCallsHelper", cwd=ROOT).start()
    message = str(info.value)
    assert "SyncCallsHelper.handle_batch is @shoal.batch, so it must be awaited" in message
    assert "async def __call__(self, row): return await self.handle_batch(row)" in message


def test_a_plain_def_that_returns_a_coroutine_is_a_clear_500() -> None:
    with ServeProcess(f"c={MODELS}:ReturnsCoroutine", cwd=ROOT) as proc:
        r = httpx.post(f"{proc.url}/v1/models/c:predict", json={"instances": [1]}, timeout=30)
        assert r.status_code == 500
        assert "is a plain def but returned a coroutine; make it `async def`" in r.json()["error"]
        assert "never awaited" not in proc.logs()  # it was closed, not left to warn
