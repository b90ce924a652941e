"""shoal.handle: in-process fan-out runs in parallel; over HTTP the caller's remaining deadline
travels in x-shoal-timeout-ms."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import shoal
from shoal.runtime import handle as handle_mod
from shoal.runtime.errors import ModelNotFound
from shoal.runtime.model import ServedModel
from shoal.runtime.testing import ServeProcess

ROOT = Path(__file__).resolve().parents[2]


class Rendezvous:
    """Answers only once `parties` calls are inside it at the same time."""

    def __init__(self, barrier: asyncio.Barrier, tag: str) -> None:
        self.barrier = barrier
        self.tag = tag

    async def __call__(self, row: int) -> str:
        await self.barrier.wait()
        return f"{self.tag}:{row}"


@pytest.fixture
def local_models() -> Iterator[asyncio.Barrier]:
    barrier = asyncio.Barrier(2)
    names = ["left", "right"]
    for name in names:
        model = ServedModel(name, Rendezvous(barrier, name))
        model.ready = True
        handle_mod.register_local(model)
    yield barrier
    for name in names:
        handle_mod.unregister_local(name)


async def test_gathered_local_handles_run_in_parallel(local_models: asyncio.Barrier) -> None:
    left, right = shoal.handle("left"), shoal.handle("right")
    # Sequential calls would wait forever at the barrier; parallel ones meet there.
    result = await asyncio.wait_for(asyncio.gather(left(1), right(2)), timeout=10)
    assert list(result) == ["left:1", "right:2"]


async def test_unknown_model_without_gateway_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_GATEWAY_URL", raising=False)
    with pytest.raises(ModelNotFound, match="SHOAL_GATEWAY_URL is not set"):
        await shoal.handle("elsewhere")(1)


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, Path]]:
    gates = tmp_path_factory.mktemp("gates")
    with ServeProcess(
        "echo=tests/runtime/sample_models.py:Echo",
        "gated=tests/runtime/sample_models.py:Gated",
        "--config",
        f"gated.gate_dir={gates}",
        cwd=ROOT,
    ) as proc:
        yield proc, gates


async def test_remote_handle_calls_the_gateway_url(remote: tuple[ServeProcess, Path]) -> None:
    proc, _ = remote
    h = shoal.handle("echo", gateway_url=proc.url)
    try:
        assert list(await asyncio.gather(h([1, 2]), h("x"))) == [[1, 2], "x"]
    finally:
        await h.aclose()


async def test_remote_handle_carries_the_remaining_deadline(
    remote: tuple[ServeProcess, Path],
) -> None:
    proc, gates = remote
    h = shoal.handle("gated", gateway_url=proc.url)
    loop = asyncio.get_running_loop()
    handle_mod.current_deadline.set(loop.time() + 0.3)  # as if our own request had 300 ms left
    try:
        with pytest.raises(handle_mod.RemoteError) as info:
            await h("never-opened")
        assert info.value.status == 504
        # The callee (default timeout 30 s) applied OUR budget: it got x-shoal-timeout-ms,
        # at most the 300 ms we had (how much less depends on the machine, so not asserted).
        m = re.search(r"no answer within (\d+) ms", info.value.message)
        assert m is not None, info.value.message
        assert int(m.group(1)) <= 300
    finally:
        (gates / "never-opened").touch()
        await h.aclose()
