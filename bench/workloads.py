"""Workloads, request bodies and how to read an answer back, per wire protocol."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bench.mlp import IN_FEATURES, sample_row


@dataclass(frozen=True)
class Workload:
    name: str
    hidden: int
    what: str


WORKLOADS: dict[str, Workload] = {
    "W1": Workload("W1", 512, "overhead-bound: MLP 64->512->512->10, single-row requests"),
    "W2": Workload("W2", 2048, "compute-bound: MLP 64->2048->2048->10, single-row requests"),
}


def body(protocol: str) -> bytes:
    """The one body every request of a measurement carries (byte-identical across peers)."""
    row = sample_row()
    if protocol == "v1":
        doc: dict[str, Any] = {"instances": [row]}
    elif protocol == "v2":
        doc = {
            "inputs": [
                {"name": "input-0", "shape": [1, IN_FEATURES], "datatype": "FP32", "data": row}
            ]
        }
    else:
        raise ValueError(f"unknown protocol {protocol!r}")
    return json.dumps(doc, separators=(",", ":")).encode()


def answer(protocol: str, payload: bytes) -> list[float]:
    """The 10 outputs for the one row, from a V1 or V2 response body."""
    doc = json.loads(payload)
    pred = doc["predictions"][0] if protocol == "v1" else doc["outputs"][0]["data"]
    flat = [float(x) for x in (pred if not isinstance(pred[0], list) else pred[0])]
    return flat


def check_answer(protocol: str, payload: bytes, expected: list[float], tol: float = 1e-4) -> None:
    got = answer(protocol, payload)
    if len(got) != len(expected) or any(
        abs(a - b) > tol for a, b in zip(got, expected, strict=True)
    ):
        raise AssertionError(f"wrong answer: got {got}, expected {expected}")
