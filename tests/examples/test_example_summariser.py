"""examples/summariser.py under `shoal serve`: deterministic summaries, batched."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from shoal.runtime.testing import ServeProcess, batch_stats

ROOT = Path(__file__).resolve().parents[2]
TEXT = (
    "The city council approved a new budget for public schools on Tuesday after a long "
    "debate about teacher salaries and classroom sizes."
)
OTHERS = [
    "Heavy snow closed the mountain roads and stranded hundreds of skiers overnight.",
    "The orchestra performed a new symphony by a young composer to a full concert hall.",
    "Engineers finished testing the bridge before it opens to traffic next month.",
]


async def test_summaries_are_short_extractive_and_deterministic() -> None:
    # A batch closes when it holds 3 rows or 2 s after its first: the 3 concurrent requests
    # below fill one batch, however slowly a loaded machine delivers them.
    knobs = ("--max-batch-size", "3", "--batch-wait-timeout-s", "2")
    with ServeProcess("summariser=examples.summariser:Summariser", *knobs, cwd=ROOT) as proc:
        async with httpx.AsyncClient(base_url=proc.url, timeout=60) as client:
            r = await client.post("/v1/models/summariser:predict", json={"instances": [TEXT]})
            assert r.status_code == 200, r.text
            (summary,) = r.json()["predictions"]
            assert summary == "council approved budget public schools teacher salaries classroom"

            # Concurrent requests are batched together and give the same answers as alone.
            assert batch_stats((await client.get("/metrics")).text, "summariser") == (1.0, 1.0)
            alone = [
                (
                    await client.post("/v1/models/summariser:predict", json={"instances": [t]})
                ).json()["predictions"][0]
                for t in OTHERS
            ]
            together = await asyncio.gather(
                *(
                    client.post("/v1/models/summariser:predict", json={"instances": [t]})
                    for t in OTHERS
                )
            )
            assert [t.json()["predictions"][0] for t in together] == alone
            # four batches of one so far, then the three requests sent together: ONE batch
            assert batch_stats((await client.get("/metrics")).text, "summariser") == (5.0, 7.0)
            for text, s in zip(OTHERS, alone, strict=True):
                assert 0 < len(s.split()) <= 8
                assert all(w in text for w in s.split())

            body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXT]}]}
            r = await client.post("/v2/models/summariser/infer", json=body)
            assert r.json()["outputs"][0]["data"] == [summary]
