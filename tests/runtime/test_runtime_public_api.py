"""The runtime's part of the user-facing API: `shoal.batch` and `shoal.handle`."""

from __future__ import annotations

import shoal
from shoal.runtime.batching import batch
from shoal.runtime.handle import handle


def test_batch_and_handle_are_public() -> None:
    assert {"batch", "handle"} <= set(shoal.__all__)
    assert shoal.batch is batch
    assert shoal.handle is handle
