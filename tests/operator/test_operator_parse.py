"""What the schema lets through but the operator refuses becomes InvalidSpec (pure: the first
step of a pass; the API server's schema keeps such specs out of a real cluster)."""

from __future__ import annotations

import pytest

from shoal.operator.reconciler import Blocked, Reconciler
from shoal.operator.settings import OperatorSettings


def _body(spec: dict[str, object], name: str = "iris") -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "ml", "uid": "u1"}, "spec": spec}


def test_an_invalid_spec_blocks_with_the_field_named() -> None:
    rec = Reconciler(OperatorSettings())
    with pytest.raises(Blocked) as info:
        rec._parse(_body({"model": {"class": "a:B"}, "batching": {"maxBatchSize": 0}}))
    assert info.value.reason == "InvalidSpec"
    assert "spec.batching.maxBatchSize" in info.value.message


def test_a_name_that_cannot_name_a_service_blocks() -> None:
    rec = Reconciler(OperatorSettings())
    with pytest.raises(Blocked, match="DNS-1035"):
        rec._parse(_body({"model": {"class": "a:B"}}, name="9x"))
