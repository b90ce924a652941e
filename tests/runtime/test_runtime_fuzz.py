"""Seeded fuzzing of the V1/V2 request parsers through the ASGI app (no sockets): no malformed
request may get a 5xx or break the server; each refusal says what is wrong."""

from __future__ import annotations

import asyncio
import random
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest

import shoal
from shoal.runtime.dataplane import DataPlane
from shoal.runtime.metrics import RuntimeMetrics
from shoal.runtime.model import ServedModel
from shoal.runtime.server import ShoalApp


class Echo:
    @shoal.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def __call__(self, rows: list[Any]) -> list[Any]:
        return rows


GOOD_V2: dict[str, Any] = {
    "id": "1",
    "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}],
    "outputs": [{"name": "output0"}],
}
DTYPES = ["FP32", "INT8", "UINT8", "BOOL", "BYTES", "FP16", "INT64", "fp32", "", "TENSOR"]


def junk(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**40, -(2**63), 3])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e-9, 2.5])
    if kind == 4:
        return rng.choice(["", "x", "FP32", "1", "\u00e9"])
    if kind == 5:
        return []
    if kind == 6:
        return [junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(["name", "shape", "data", "datatype", "x"]): junk(rng, depth + 1)
        for _ in range(rng.randrange(3))
    }


def mutate_v2(rng: random.Random) -> bytes:
    req = orjson.loads(orjson.dumps(GOOD_V2))
    tensor = req["inputs"][0]
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(9)
        if op == 0:
            tensor.pop(rng.choice(["name", "shape", "datatype", "data"]), None)
        elif op == 1:
            tensor[rng.choice(["name", "shape", "datatype", "data"])] = junk(rng)
        elif op == 2:
            tensor["datatype"] = rng.choice(DTYPES)
        elif op == 3:
            tensor["shape"] = [rng.randrange(-1, 4) for _ in range(rng.randrange(4))]
        elif op == 4:
            tensor["data"] = [junk(rng, 2) for _ in range(rng.randrange(6))]
        elif op == 5 and isinstance(req["inputs"], list):
            req["inputs"].append(dict(tensor, name=rng.choice(["x", "y"])))
        elif op == 6:
            req[rng.choice(["inputs", "outputs", "parameters", "id"])] = junk(rng)
        elif op == 7:
            tensor["parameters"] = {"binary_data_size": junk(rng)}
        else:
            req["outputs"] = [{"name": rng.choice(["output0", "nope", ""])}]
    return orjson.dumps(req)


def binary_v2(rng: random.Random) -> tuple[bytes, list[Any]]:
    """A binary-extension request: JSON header, then raw tensor bytes, sizes often wrong."""
    datatype = rng.choice(DTYPES)
    n = rng.randrange(0, 5)
    raw = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 24)))
    size = rng.choice([len(raw), len(raw) + 1, max(0, len(raw) - 1), 4 * n, -1])
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [n],
                    "datatype": datatype,
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    )
    length = rng.choice([len(head), len(head) - 1, len(head) + 3])
    return head + raw, [(b"inference-header-content-length", str(length).encode())]


def mutate_v1(rng: random.Random) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return orjson.dumps({"instances": junk(rng)})
    if choice == 1:
        return orjson.dumps(junk(rng))
    if choice == 2:
        return orjson.dumps({"instances": [junk(rng) for _ in range(rng.randrange(1, 5))]})
    return bytes(rng.randrange(256) for _ in range(rng.randrange(12)))


async def call(app: ShoalApp, path: str, body: bytes, headers: list[Any]) -> tuple[int, bytes]:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return sent[0]["status"], sent[1]["body"]


@pytest.mark.parametrize("seed", range(12))
async def test_malformed_requests_never_get_a_5xx(seed: int) -> None:
    plane = DataPlane(["echo"])
    model = ServedModel("echo", Echo())
    await model.start()
    plane.add(model)
    plane.loaded = True
    app = ShoalApp(plane, RuntimeMetrics())
    rng = random.Random(seed)
    seen: dict[int, int] = {}
    for i in range(300):
        if i % 2:
            path, body = "/v2/models/echo/infer", mutate_v2(rng)
        else:
            path, body = "/v1/models/echo:predict", mutate_v1(rng)
        headers: list[Any] = []
        if i % 6 == 1:
            body, headers = binary_v2(rng)
        elif rng.random() < 0.1:
            headers.append(
                (b"inference-header-content-length", str(rng.randrange(-2, 40)).encode())
            )
        status, out = await call(app, path, body, headers)
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, (path, body, out)
        if status != 200:
            message = orjson.loads(out)["error"]
            assert isinstance(message, str)
            assert message
    assert seen.get(400, 0) > 50  # the fuzzer really reached the validation paths
    status, out = await call(app, "/v1/models/echo:predict", b'{"instances": [1, "a"]}', [])
    assert (status, orjson.loads(out)) == (200, {"predictions": [1, "a"]})
    await model.aclose()
