"""A small run of bench/soak.py against a real gateway (token auth, in front of a real
`shoal serve examples.adder:Adder`): under the floods of issue 10 the gateway's memory stays
bounded and normal clients keep getting their answers."""

from __future__ import annotations

from bench.soak import run


async def test_gateway_under_floods_keeps_memory_bounded_and_answers_normal_clients() -> None:
    (result,) = await run(["gateway"], duration_s=6.0, scale=0.2)
    assert result.flood_connections >= 100, result
    assert result.normal_ok > 0, result
    assert result.normal_failed == 0, result
    # Six 15 MB bodies without a token: buffered, they would add 90 MB.
    assert result.rss_peak_mb - result.rss_before_mb < 40, result
    assert result.rss_after_mb - result.rss_before_mb < 30, result
