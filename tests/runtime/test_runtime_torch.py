"""torch in the runtime: inference mode and eval mode in worker threads, the device kwarg, and
the loader thread's torch thread count holding in the worker threads."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

import shoal
from shoal.runtime.loading import LoadError, ModelSpec, instantiate, resolve_device
from shoal.runtime.model import ServedModel
from shoal.runtime.testing import ServeProcess

ROOT = Path(__file__).resolve().parents[2]


class Probe:
    def __init__(self, device: str) -> None:
        self.device = device
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))

    @shoal.batch(max_batch_size=4, batch_wait_timeout_s=0.0)
    def __call__(self, rows: list[Any]) -> list[Any]:
        x = torch.tensor(rows, dtype=torch.float32)
        y = self.net(x)
        return [
            {
                "inference_mode": torch.is_inference_mode_enabled(),
                "training": self.net.training,
                "requires_grad": bool(y.requires_grad),
                "device": str(y.device),
            }
            for _ in rows
        ]


async def test_sync_model_runs_in_inference_and_eval_mode_on_its_device() -> None:
    obj, device = instantiate(ModelSpec("probe", f"{__file__}:Probe"), "auto")
    assert device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert obj.device == device  # the device reached __init__ as device=
    model = ServedModel("probe", obj)
    await model.start()
    loop_time = asyncio.get_running_loop().time()
    (answer,) = await model.infer([[1.0, 2.0]], loop_time + 30)
    await model.aclose()
    assert answer["inference_mode"] is True
    assert answer["training"] is False  # eval(): dropout off
    assert answer["requires_grad"] is False
    assert answer["device"].startswith(device)


SCRIPT = """
import os
from concurrent.futures import ThreadPoolExecutor
import torch
from shoal.runtime.execution import call_sync
from shoal.runtime.loading import LoadError, ModelSpec, instantiate, resolve_device

with open("{path}", "w") as src:
    src.write("import torch\\nclass M:\\n    def __init__(self):\\n"
              "        torch.set_num_threads(1)\\n")
# like the runtime: the model is built in a loader thread, run in a worker thread
loader = ThreadPoolExecutor(1)
loader.submit(instantiate, ModelSpec("m", "{path}:M"), "cpu").result()
x = torch.randn(512, 512)

def work():
    for _ in range(20):
        x @ x
    return len(os.listdir("/proc/self/task"))

before = len(os.listdir("/proc/self/task"))
after = ThreadPoolExecutor(1).submit(call_sync, work).result()
print(after - before)
"""


def test_the_loader_threads_torch_thread_count_holds_in_worker_threads(tmp_path: Path) -> None:
    # OpenMP keeps the thread count per thread: without the runtime carrying it over, the
    # worker's matmuls would start extra OpenMP threads (and burn CPU spinning on 2 cores).
    script = SCRIPT.format(path=tmp_path / "m.py")
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"  # the worker thread itself, no OpenMP helpers


def test_device_resolution() -> None:
    gpu = torch.cuda.is_available()
    assert resolve_device("auto") == ("cuda" if gpu else "cpu")
    assert resolve_device("cpu") == "cpu"
    if gpu:
        assert resolve_device("cuda") == "cuda"
    else:
        with pytest.raises(LoadError, match="no CUDA device is available"):
            resolve_device("cuda")


def test_modules_inside_dict_and_list_attributes_are_served_in_eval_mode() -> None:
    with ServeProcess("m=tests/runtime/sample_models.py:HeldModules", cwd=ROOT) as proc:
        r = httpx.post(f"{proc.url}/v1/models/m:predict", json={"instances": [0]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [[False, False, False, False]]}  # dropout off in each


@pytest.mark.parametrize("rows", [1, 3], ids=["one row", "three rows"])
def test_torch_tensor_results_go_out_over_v2(rows: int) -> None:
    """A model answering with torch tensors: the V2 response is their values, for a one-row
    request (whose output is a view of the single result) as for several."""
    data = [[float(i), float(i) + 0.5] for i in range(rows)]
    body = {"inputs": [{"name": "x", "shape": [rows, 2], "datatype": "FP32", "data": data}]}
    with ServeProcess("d=tests/runtime/sample_models.py:TorchDoubler", cwd=ROOT) as proc:
        r = httpx.post(f"{proc.url}/v2/models/d/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["datatype"] == "FP32"
    assert out["shape"] == [rows, 2]
    assert out["data"] == [2 * v for row in data for v in row]
