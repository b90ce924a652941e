"""JSON encoding shared by the protocols: orjson, with numpy natively and torch via lists."""

from __future__ import annotations

from typing import Any

import orjson

from shoal.runtime.errors import InvalidInput

_OPTS = orjson.OPT_SERIALIZE_NUMPY


def _default(obj: Any) -> Any:
    tolist = getattr(obj, "tolist", None)  # torch tensors, non-contiguous numpy arrays
    if callable(tolist):
        return tolist()
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, set | tuple | frozenset):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default, option=_OPTS)


def loads_object(body: bytes, what: str) -> dict[str, Any]:
    """Parse a JSON object or raise InvalidInput saying what is wrong."""
    if not body:
        raise InvalidInput(f"{what}: empty request body; expected a JSON object")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what}: malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value
