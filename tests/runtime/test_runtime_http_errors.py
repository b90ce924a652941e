"""Every error path of the runtime, over real HTTP on loopback against `shoal serve`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from shoal.runtime.testing import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
MODELS = "tests/runtime/sample_models.py"


@pytest.fixture(scope="module")
def gate_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gates")


@pytest.fixture(scope="module")
def server(gate_dir: Path) -> Iterator[ServeProcess]:
    with ServeProcess(
        f"echo={MODELS}:Echo",
        f"declared={MODELS}:Declared",
        f"gated={MODELS}:Gated",
        f"broken={MODELS}:Broken",
        f"gatedb={MODELS}:GatedBatched",
        "--config",
        f"gated.gate_dir={gate_dir}",
        "--config",
        f"gatedb.gate_dir={gate_dir}",
        "--max-body-bytes",
        "4096",
        "--log-format",
        "json",
        cwd=ROOT,
    ) as proc:
        yield proc


def open_gate(gate_dir: Path, token: str) -> None:
    (gate_dir / token).touch()


async def wait_for_metric(client: httpx.AsyncClient, line: str, within_s: float = 10.0) -> None:
    """Wait (with a deadline) until /metrics shows `line`: the server's own view of its state."""
    deadline = time.monotonic() + within_s
    while True:
        text = (await client.get("/metrics")).text
        if line in text:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{line!r} never appeared in /metrics:\n{text}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def client(server: ServeProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        yield c


V2_ROW = {"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}


def error_of(response: httpx.Response) -> str:
    body = orjson.loads(response.content)
    assert set(body) == {"error"}
    message: str = body["error"]
    return message


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/nope:predict", json={"instances": [1]})
    assert r.status_code == 404
    assert "'nope' not found" in error_of(r)
    r = await client.post("/v2/models/nope/infer", json={"inputs": []})
    assert r.status_code == 404
    assert (await client.get("/v2/models/nope")).status_code == 404
    assert (await client.get("/v2/models/nope/ready")).status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/models/echo:predict", b"{not json", "malformed JSON"),
        ("/v1/models/echo:predict", b"[1, 2]", "expected a JSON object"),
        ("/v1/models/echo:predict", b'{"rows": [1]}', '"instances"'),
        ("/v1/models/echo:predict", b'{"instances": 3}', "must be a list"),
        ("/v1/models/echo:predict", b'{"instances": []}', "is empty"),
        ("/v2/models/echo/infer", b"{", "malformed JSON"),
        ("/v2/models/echo/infer", b'{"inputs": []}', "non-empty"),
        (
            "/v2/models/echo/infer",
            b'{"inputs": [{"name": "a", "shape": [2], "datatype": "FP99", "data": [1, 2]}]}',
            "unknown datatype 'FP99'",
        ),
        (
            "/v2/models/echo/infer",
            b'{"inputs": [{"name": "a", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}',
            "shape needs 3 elements, data has 2",
        ),
        (
            "/v2/models/echo/infer",
            b'{"inputs": [{"name": "a", "shape": [2], "datatype": "INT32", "data": [1.5, 2]}]}',
            "INT32 does not accept floats",
        ),
        (
            "/v2/models/echo/infer",
            b'{"inputs": [{"name": "a", "shape": [1], "datatype": "UINT8", "data": [300]}]}',
            "out of range for UINT8",
        ),
        (
            "/v2/models/echo/infer",
            b'{"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "data": ["x", "y"]}]}',
            "FP32 does not accept text",
        ),
        (
            "/v2/models/echo/infer",
            b'{"inputs": [{"name": "a", "shape": [], "datatype": "FP32", "data": [1]}]}',
            "no batch dimension",
        ),
        (
            "/v2/models/echo/infer",
            b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]},'
            b'{"name": "b", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}',
            "2 rows, but other inputs have 1",
        ),
        (
            "/v2/models/declared/infer",
            b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1,2,3,4]}]}',
            "does not match the model's [-1, 3]",
        ),
        (
            "/v2/models/declared/infer",
            b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT64", "data": [1,2,3]}]}',
            "the model takes FP32",
        ),
        (
            "/v2/models/declared/infer",
            b'{"inputs": [{"name": "y", "shape": [1, 3], "datatype": "FP32", "data": [1,2,3]}]}',
            "unknown input 'y'",
        ),
    ],
)
async def test_bad_requests_are_400_with_a_message(
    client: httpx.AsyncClient, path: str, body: bytes, message: str
) -> None:
    r = await client.post(path, content=body)
    assert r.status_code == 400, r.text
    assert message in error_of(r)


async def test_good_requests_still_answer_after_bad_ones(client: httpx.AsyncClient) -> None:
    bad = [client.post("/v1/models/echo:predict", content=b"{") for _ in range(5)]
    good = [client.post("/v1/models/echo:predict", json={"instances": [i]}) for i in range(5)]
    responses = await asyncio.gather(*bad, *good)
    assert [r.status_code for r in responses] == [400] * 5 + [200] * 5
    assert [r.json()["predictions"] for r in responses[5:]] == [[i] for i in range(5)]


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/echo:predict", json={"instances": [0] * 3000})
    assert r.status_code == 413
    assert "exceeds the limit of 4096" in error_of(r)


async def test_wrong_method_is_405(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/models/echo:predict")).status_code == 405
    assert (await client.get("/v2/models/echo/infer")).status_code == 405


async def test_batch_output_length_mismatch_is_500_and_says_so(
    client: httpx.AsyncClient, server: ServeProcess
) -> None:
    r = await client.post(
        "/v1/models/broken:predict", json={"instances": [1, 2]}, headers={"x-request-id": "r-500"}
    )
    assert r.status_code == 500
    assert "returned 1 results for a batch of 2" in error_of(r)
    # JSON logs: the error is logged with its request id
    lines = [orjson.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    assert any(
        e.get("request_id") == "r-500" and e["level"] == "warning" and "500" in e["msg"]
        for e in lines
    ), lines[-5:]
    # the replica is fine
    assert (await client.get("/v2/health/ready")).status_code == 200


@pytest.mark.parametrize(
    "value", ["soon", "inf", "1e20", "nan", "-5", "1.5", "+50", "1_000", "600001", "5e3"]
)
async def test_timeout_header_takes_only_a_bounded_positive_integer(
    client: httpx.AsyncClient, value: str
) -> None:
    # `inf` and `1e20` used to parse as floats and lift the deadline altogether
    for path, body in (
        ("/v1/models/echo:predict", {"instances": [1]}),
        ("/v2/models/echo/infer", {"inputs": [V2_ROW]}),
    ):
        r = await client.post(path, json=body, headers={"x-shoal-timeout-ms": value})
        assert r.status_code == 400, (value, r.text)
        assert "x-shoal-timeout-ms must be an integer of milliseconds in 1..600000" in error_of(r)


async def test_timeout_header_in_range_is_the_deadline(client: httpx.AsyncClient) -> None:
    ok = await client.post(
        "/v1/models/echo:predict", json={"instances": [1]}, headers={"x-shoal-timeout-ms": "600000"}
    )
    assert ok.status_code == 200
    spent = await client.post(
        "/v1/models/echo:predict", json={"instances": [1]}, headers={"x-shoal-timeout-ms": "0"}
    )
    assert spent.status_code == 504  # the caller's budget is already spent


async def test_404_quotes_at_most_a_bounded_part_of_the_name(client: httpx.AsyncClient) -> None:
    name = "n" * 20_000
    for r in (
        await client.post(f"/v1/models/{name}:predict", json={"instances": [1]}),
        await client.get(f"/v2/models/{name}"),
        await client.get(f"/{name}/custom"),
    ):
        assert r.status_code == 404
        assert len(r.content) < 400, len(r.content)
        assert "nnn... (200" in error_of(r)


async def test_percent_encoded_utf8_names_are_decoded(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/caf%C3%A9:predict", json={"instances": [1]})
    assert r.status_code == 404
    assert "model 'café' not found" in error_of(r)


async def test_metadata_requests_are_labelled_with_the_model(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/models/declared")).status_code == 200
    assert (await client.get("/v2/models/declared/ready")).status_code == 200
    assert (await client.get("/v1/models/declared")).status_code == 200
    text = (await client.get("/metrics")).text
    for route in ("/v2/models/{model}", "/v2/models/{model}/ready", "/v1/models/{model}"):
        protocol = route[1:3]
        assert (
            f'shoal_requests_total{{code="200",model="declared",protocol="{protocol}",'
            f'route="{route}"}}'
        ) in text, text
    assert 'code="200",model="unknown"' not in text


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/models/echo:predict", json={"instances": [1]}, headers={"x-request-id": "abc-123"}
    )
    assert r.headers["x-request-id"] == "abc-123"
    r1 = await client.post("/v1/models/echo:predict", json={"instances": [1]})
    r2 = await client.post("/v1/models/echo:predict", json={"instances": [1]})
    assert r1.headers["x-request-id"]
    assert r1.headers["x-request-id"] != r2.headers["x-request-id"]


async def test_deadline_is_504_and_counts_queue_time(
    client: httpx.AsyncClient, gate_dir: Path
) -> None:
    blocker = asyncio.ensure_future(
        client.post("/v1/models/gated:predict", json={"instances": ["d-block"]})
    )
    await wait_for_metric(client, 'shoal_inflight_requests{model="gated"} 1.0')
    # Queued behind the blocked call; its 150 ms run out in the queue.
    r = await client.post(
        "/v1/models/gated:predict",
        json={"instances": ["d-late"]},
        headers={"x-shoal-timeout-ms": "150"},
    )
    assert r.status_code == 504
    assert "deadline exceeded" in error_of(r)
    open_gate(gate_dir, "d-block")
    assert (await blocker).json() == {"predictions": ["passed d-block"]}


async def test_full_queue_is_503_with_retry_after(gate_dir: Path) -> None:
    with ServeProcess(
        f"gated={MODELS}:Gated",
        "--config",
        f"gate_dir={gate_dir}",
        "--max-queue-size",
        "1",
        cwd=ROOT,
    ) as proc:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            await _fill_queue_then_refuse(client, gate_dir)


async def _fill_queue_then_refuse(client: httpx.AsyncClient, gate_dir: Path) -> None:
    running = asyncio.ensure_future(
        client.post("/v1/models/gated:predict", json={"instances": ["q-1"]})
    )
    await wait_for_metric(client, 'shoal_inflight_requests{model="gated"} 1.0')
    queued = asyncio.ensure_future(
        client.post("/v1/models/gated:predict", json={"instances": ["q-2"]})
    )
    await wait_for_metric(client, 'shoal_queue_depth{model="gated"} 1.0')
    r = await client.post("/v1/models/gated:predict", json={"instances": ["q-3"]})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert "queue is full" in error_of(r)
    open_gate(gate_dir, "q-1")
    open_gate(gate_dir, "q-2")
    assert (await running).status_code == 200
    assert (await queued).status_code == 200


async def test_health_and_metrics_answer_while_the_model_blocks(
    client: httpx.AsyncClient, gate_dir: Path
) -> None:
    blocked = asyncio.ensure_future(
        client.post("/v1/models/gated:predict", json={"instances": ["h-1"]})
    )
    await wait_for_metric(client, 'shoal_inflight_requests{model="gated"} 1.0')
    for _ in range(3):
        r = await client.get("/v2/health/live", timeout=2)
        assert r.status_code == 200
        assert (await client.get("/v2/health/ready", timeout=2)).status_code == 200
    assert not blocked.done()  # the model is still inside its call
    open_gate(gate_dir, "h-1")
    assert (await blocked).status_code == 200


async def test_metrics_use_the_contract_names(client: httpx.AsyncClient) -> None:
    await client.post("/v1/models/echo:predict", json={"instances": [1, 2, 3]})
    text = (await client.get("/metrics")).text
    for name in (
        'shoal_requests_total{code="200",model="echo",protocol="v1",'
        'route="/v1/models/{model}:predict"}',
        'shoal_request_duration_seconds_bucket{code="200"',
        'shoal_batch_size_bucket{le="1.0",model="echo"}',
        'shoal_queue_depth{model="echo"}',
        'shoal_inflight_requests{model="echo"}',
    ):
        assert name in text


async def test_a_queued_request_whose_client_left_is_never_computed(
    client: httpx.AsyncClient, gate_dir: Path
) -> None:
    first = asyncio.ensure_future(
        client.post("/v1/models/gatedb:predict", json={"instances": ["c-first"]})
    )
    await wait_for_metric(client, 'shoal_inflight_requests{model="gatedb"} 1.0')
    async with httpx.AsyncClient(base_url=client.base_url, timeout=30) as leaver:
        left = asyncio.ensure_future(
            leaver.post("/v1/models/gatedb:predict", json={"instances": ["c-left"]})
        )
        await wait_for_metric(client, 'shoal_queue_depth{model="gatedb"} 1.0')
        left.cancel()  # the client gives up: its connection closes
        with pytest.raises(asyncio.CancelledError):
            await left
    assert (await client.get("/v2/health/live")).status_code == 200
    open_gate(gate_dir, "c-first")
    open_gate(gate_dir, "c-after")
    assert (await first).json() == {"predictions": ["passed c-first"]}
    r = await client.post("/v1/models/gatedb:predict", json={"instances": ["c-after"]})
    assert r.json() == {"predictions": ["passed c-after"]}
    seen = (gate_dir / "seen").read_text().split()
    assert seen == ["c-first", "c-after"]  # "c-left" was dropped from the queue
    await wait_for_metric(
        client,
        'shoal_requests_total{code="499",model="gatedb",protocol="v1",'
        'route="/v1/models/{model}:predict"} 1.0',
    )


async def test_v1_lists_the_models(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models")
    assert r.json() == {"models": ["echo", "declared", "gated", "broken", "gatedb"]}
    assert (await client.get("/v1/models/echo")).json() == {"name": "echo", "ready": True}
