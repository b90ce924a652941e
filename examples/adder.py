"""The vectorised adder of Ray Serve's batching tutorial, as a Shoal model.

    shoal serve examples.adder:Adder
    curl -s localhost:8000/v1/models/adder:predict -d '{"instances": [1, 2, 3]}'
    # {"predictions":[2,3,4]}

Each request's numbers are rows; rows from concurrent requests are batched together and added
in one numpy call.
"""

from __future__ import annotations

import numpy as np

import shoal


class Adder:
    def __init__(self, increment: int = 1) -> None:
        self.increment = increment

    @shoal.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def __call__(self, numbers: list[int]) -> list[int]:
        result: list[int] = (np.asarray(numbers) + self.increment).astype(int).tolist()
        return result
