"""The embedded default model: a seeded torch MLP (64 -> hidden -> hidden -> 10), batched.

`shoal demo` serves it; the benchmark's W1 (hidden 512) and W2 (hidden 2048) use it too:
    shoal serve shoal.runtime.default_model:DefaultMLP --config hidden=2048
A row is 64 numbers; the answer is 10 logits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shoal.runtime.batching import batch


class DefaultMLP:
    inputs = [{"name": "input0", "datatype": "FP32", "shape": [-1, 64]}]
    outputs = [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]

    def __init__(
        self, hidden: int = 512, seed: int = 0, in_features: int = 64, device: str = "cpu"
    ) -> None:
        import torch

        self.in_features = in_features
        self.inputs = [{"name": "input0", "datatype": "FP32", "shape": [-1, in_features]}]
        gen = torch.Generator().manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(in_features, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, 10),
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / p.shape[-1] ** 0.5))
        self.device = device
        self._torch = torch

    def _row(self, row: Any) -> np.ndarray[Any, Any] | Exception:
        try:
            x = np.asarray(row, dtype=np.float32)
        except (TypeError, ValueError):
            return ValueError(f"a row must be {self.in_features} numbers")
        if x.shape != (self.in_features,):
            return ValueError(
                f"a row must be {self.in_features} numbers, got shape {list(x.shape)}"
            )
        return x

    @batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    def __call__(self, rows: list[Any]) -> list[Any]:
        # A malformed row fails only its own request, never the batch it shares.
        checked = [self._row(r) for r in rows]
        good = [x for x in checked if not isinstance(x, Exception)]
        if not good:
            return checked
        out = (
            self.net(self._torch.from_numpy(np.stack(good)).to(self.device)).detach().cpu().numpy()
        )
        it = iter(out)
        return [x if isinstance(x, Exception) else next(it) for x in checked]
