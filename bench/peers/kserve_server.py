"""KServe peer: a `kserve.Model` subclass with the same model, served by KServe's Python model
server on its V1 endpoint `POST /v1/models/mlp:predict`. Runs in bench/.venv-kserve (KServe pins
its own dependencies; torch comes from the main venv, see bench/link_torch.py).

KServe's Python server has no batcher of its own (batching lives in its Go agent sidecar), and a
plain `def predict` runs on the event loop: that is how its docs write a model, so that is what
runs here. gRPC is off; everything else is KServe's default (latency logging on, one worker)."""

from __future__ import annotations

import argparse
from typing import Any

from bench.mlp import MLPCore, ModelConfig


def main() -> None:
    from kserve import Model, ModelServer, model_server

    class MLPModel(Model):  # type: ignore[misc]
        def __init__(self, name: str, core: MLPCore) -> None:
            super().__init__(name)
            self.core = core
            self.ready = True

        def predict(self, payload: Any, headers: Any = None) -> dict[str, Any]:
            return {"predictions": self.core.predict_rows(payload["instances"])}

    p = argparse.ArgumentParser(parents=[model_server.parser], conflict_handler="resolve")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--stats", default=None)
    a, _ = p.parse_known_args()
    core = MLPCore(ModelConfig(hidden=a.hidden, torch_threads=a.torch_threads), a.stats)
    ModelServer(http_port=a.http_port, workers=1, enable_grpc=False).start([MLPModel("mlp", core)])


if __name__ == "__main__":
    main()
