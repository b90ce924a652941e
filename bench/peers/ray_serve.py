"""Ray Serve peer: the same model behind `@serve.batch` with the same knobs, reached through Ray's
own HTTP proxy at `POST /mlp` with a KServe-V1-shaped body. The batched method calls the model
directly, as Ray's batching guide does. `max_ongoing_requests` is raised above the number of
clients (its default, 5, would cap every batch at 5 and make the comparison unfair to Ray)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from bench.mlp import MLPCore, ModelConfig

log = logging.getLogger(__name__)


def build_app(
    config: ModelConfig, stats: str | None, max_batch_size: int, wait_s: float, max_ongoing: int
) -> Any:
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(max_ongoing_requests=max_ongoing, ray_actor_options={"num_cpus": 0})
    class MLPDeployment:
        def __init__(self) -> None:
            self.core = MLPCore(config, stats)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=wait_s)
        async def predict(self, rows: list[list[float]]) -> list[list[float]]:
            return self.core.predict_rows(rows)

        async def __call__(self, request: Request) -> dict[str, Any]:
            body = await request.json()
            return {"predictions": [await self.predict(body["instances"][0])]}

    return MLPDeployment.bind()  # type: ignore[attr-defined]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.005)
    p.add_argument("--max-ongoing-requests", type=int, default=256)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--stats", default=None)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO)

    import ray
    from ray import serve

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ray.init(num_cpus=a.num_cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    config = ModelConfig(hidden=a.hidden, torch_threads=a.torch_threads)
    app = build_app(
        config, a.stats, a.max_batch_size, a.batch_wait_timeout_s, a.max_ongoing_requests
    )
    serve.run(app, name="mlp", route_prefix="/mlp")
    log.info("ray serve ready on port %d", a.port)
    stop.wait()
    serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()


if __name__ == "__main__":
    main()
