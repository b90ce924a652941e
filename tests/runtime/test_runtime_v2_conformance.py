"""A real V2 client (tritonclient.http) against `shoal serve` of the embedded torch MLP,
plus `shoal demo --once` end to end."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from shoal.runtime.default_model import DefaultMLP
from shoal.runtime.testing import ServeProcess, shoal_command

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mlp_server() -> Iterator[ServeProcess]:
    with ServeProcess(
        "mlp=shoal.runtime.default_model:DefaultMLP", "--config", "hidden=64", cwd=ROOT
    ) as proc:
        yield proc


@pytest.fixture
def client(mlp_server: ServeProcess) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(mlp_server.url.removeprefix("http://"))
    yield c
    c.close()


def expected(x: np.ndarray) -> np.ndarray:
    model = DefaultMLP(hidden=64)
    return np.stack(DefaultMLP.__call__.func(model, list(x)))


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    server = client.get_server_metadata()
    assert server["name"] == "shoal"
    meta = client.get_model_metadata("mlp")
    assert meta["name"] == "mlp"
    assert meta["inputs"] == [{"name": "input0", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"][0]["name"] == "logits"


@pytest.mark.parametrize("binary", [True, False])
def test_infer_matches_the_model_in_process(
    client: triton.InferenceServerClient, binary: bool
) -> None:
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    inp = triton.InferInput("input0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = triton.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer("mlp", [inp], outputs=[out], request_id="req-7")
    got = result.as_numpy("logits")
    assert got.shape == (3, 10)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected(x), rtol=1e-5, atol=1e-6)
    assert result.get_response()["id"] == "req-7"


def test_default_outputs_come_back_binary(client: triton.InferenceServerClient) -> None:
    x = np.ones((1, 64), dtype=np.float32)
    inp = triton.InferInput("input0", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp])  # no outputs named: binary_data_output
    np.testing.assert_allclose(result.as_numpy("logits"), expected(x), rtol=1e-5, atol=1e-6)


def test_errors_reach_the_client_as_messages(client: triton.InferenceServerClient) -> None:
    inp = triton.InferInput("input0", [1, 63], "FP32")
    inp.set_data_from_numpy(np.ones((1, 63), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"does not match the model's \[-1, 64\]"):
        client.infer("mlp", [inp])
    inp = triton.InferInput("input0", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="not found"):
        client.infer("nope", [inp])


def test_demo_once_answers_over_v1_and_v2() -> None:
    done = subprocess.run(
        [*shoal_command(), "demo", "--once"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "POST /v1/models/default:predict -> 200" in done.stdout
    assert "POST /v2/models/default/infer -> 200" in done.stdout
    assert '"predictions": [[' in done.stdout
