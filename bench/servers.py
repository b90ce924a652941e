"""How each server under test is started: one `ServerSpec` per peer, all from the same knobs."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.procs import ServerSpec, free_port
from bench.workloads import body

ROOT = Path(__file__).resolve().parent.parent
KSERVE_PYTHON = ROOT / "bench" / ".venv-kserve" / "bin" / "python"
SHOAL = Path(sys.executable).parent / "shoal"


@dataclass(frozen=True)
class Knobs:
    """Identical for every peer."""

    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.005
    torch_threads: int = 1
    batch_wait_mode: str = "hard"
    """Shoal only: hard (Ray's rule, what the peers do) or adaptive (work conserving)."""


@dataclass(frozen=True)
class Endpoint:
    """One way to ask a server: a protocol and the path that speaks it."""

    protocol: str
    path: str


def _model_args(hidden: int, knobs: Knobs, stats: str) -> list[str]:
    return ["--hidden", str(hidden), "--torch-threads", str(knobs.torch_threads), "--stats", stats]


def _env(stats: str, knobs: Knobs) -> dict[str, str]:
    # PYTHONPATH: Ray's workers and `shoal serve` import `bench` from the repo root too.
    # OMP_NUM_THREADS: the thread count for every thread of every server, not only the one that
    # called torch.set_num_threads (bench.mlp also pins each thread that runs the model).
    return {
        "PYTHONPATH": str(ROOT),
        "SHOAL_BENCH_STATS": stats,
        "OMP_NUM_THREADS": str(knobs.torch_threads),
    }


def floor(hidden: int, knobs: Knobs, stats: str) -> tuple[ServerSpec, list[Endpoint]]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.peers.floor",
        "--port",
        str(port),
        "--max-batch-size",
        str(knobs.max_batch_size),
        "--batch-wait-timeout-s",
        str(knobs.batch_wait_timeout_s),
        *_model_args(hidden, knobs, stats),
    ]
    path = "/v1/models/mlp:predict"
    return ServerSpec("floor", argv, port, path, body("v1"), _env(stats, knobs)), [
        Endpoint("v1", path)
    ]


def ray_serve(hidden: int, knobs: Knobs, stats: str) -> tuple[ServerSpec, list[Endpoint]]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.peers.ray_serve",
        "--port",
        str(port),
        "--max-batch-size",
        str(knobs.max_batch_size),
        "--batch-wait-timeout-s",
        str(knobs.batch_wait_timeout_s),
        *_model_args(hidden, knobs, stats),
    ]
    spec = ServerSpec(
        "ray-serve", argv, port, "/mlp", body("v1"), _env(stats, knobs), start_timeout_s=240.0
    )
    return spec, [Endpoint("v1", "/mlp")]


def ray_serve_tuned(hidden: int, knobs: Knobs, stats: str) -> tuple[ServerSpec, list[Endpoint]]:
    """Ray Serve with its documented high-throughput switch (RAY_SERVE_THROUGHPUT_OPTIMIZED=1)."""
    spec, endpoints = ray_serve(hidden, knobs, stats)
    env = {**spec.env, "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    return dataclasses.replace(spec, name="ray-serve-tuned", env=env), endpoints


def kserve(hidden: int, knobs: Knobs, stats: str) -> tuple[ServerSpec, list[Endpoint]]:
    port = free_port()
    argv = [
        str(KSERVE_PYTHON),
        "-m",
        "bench.peers.kserve_server",
        "--http_port",
        str(port),
        *_model_args(hidden, knobs, stats),
    ]
    path = "/v1/models/mlp:predict"
    spec = ServerSpec(
        "kserve", argv, port, path, body("v1"), _env(stats, knobs), start_timeout_s=120.0
    )
    return spec, [Endpoint("v1", path)]


def shoal(hidden: int, knobs: Knobs, stats: str) -> tuple[ServerSpec, list[Endpoint]]:
    port = free_port()
    argv = [
        str(SHOAL),
        "serve",
        "mlp=bench.models:MLP",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--config",
        f"hidden={hidden}",
        "--config",
        f"torch_threads={knobs.torch_threads}",
        "--max-batch-size",
        str(knobs.max_batch_size),
        "--batch-wait-timeout-s",
        str(knobs.batch_wait_timeout_s),
        "--batch-wait-mode",
        knobs.batch_wait_mode,
        "--log-format",
        "json",
    ]
    v2 = "/v2/models/mlp/infer"
    spec = ServerSpec(
        "shoal", argv, port, v2, body("v2"), _env(stats, knobs), start_timeout_s=120.0
    )
    return spec, [Endpoint("v2", v2), Endpoint("v1", "/v1/models/mlp:predict")]


def shoal_gateway(upstream: str, stats: str, knobs: Knobs) -> ServerSpec:
    port = free_port()
    argv = [
        str(SHOAL),
        "gateway",
        "--upstream",
        f"mlp={upstream}",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
    ]
    return ServerSpec(
        "shoal-gateway",
        argv,
        port,
        "/v2/models/mlp/infer",
        body("v2"),
        _env(stats, knobs),
        start_timeout_s=60.0,
    )
