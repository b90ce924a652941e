"""KServe V1: `POST /v1/models/{name}:predict` with `{"instances": [...]}` (or `"inputs"`)
-> `{"predictions": [...]}`; each instance is one row."""

from __future__ import annotations

from typing import Any

from shoal.runtime.errors import InvalidInput
from shoal.runtime.protocol.encoding import dumps, loads_object


def parse_predict(body: bytes) -> list[Any]:
    request = loads_object(body, "V1 predict")
    instances = request.get("instances", request.get("inputs"))
    if instances is None:
        raise InvalidInput('V1 predict: the body needs an "instances" list')
    if not isinstance(instances, list):
        raise InvalidInput(
            f'V1 predict: "instances" must be a list, got {type(instances).__name__}'
        )
    if not instances:
        raise InvalidInput('V1 predict: "instances" is empty')
    return instances


def encode_predict(outputs: list[Any]) -> bytes:
    return dumps({"predictions": outputs})


def model_status(name: str, ready: bool) -> bytes:
    return dumps({"name": name, "ready": ready})
