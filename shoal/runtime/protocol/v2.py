"""Open Inference Protocol V2 (REST): infer request/response with datatype and shape checks,
and the binary tensor extension (`Inference-Header-Content-Length`) that tritonclient uses.

Rows: every input's first dimension is the row count n. A model with one input receives each
row as that input's slice (a numpy array, or a Python scalar/str for shape [n]); with several
inputs, a dict name -> slice. Results are stacked back into tensors of shape [n, ...]; a result
that is a dict gives one output tensor per key.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from shoal.runtime.errors import InvalidInput, ModelError
from shoal.runtime.protocol.encoding import dumps, loads_object

DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
_NP_DTYPES = {k: np.dtype(v) for k, v in DTYPES.items()}
_INT_RANGE = {
    k: (np.iinfo(d).min, np.iinfo(d).max) for k, d in _NP_DTYPES.items() if d.kind in "iu"
}
_KIND_OK = {"b": "b", "u": "iu", "i": "iu", "f": "iuf", "O": "USO"}
_PLAIN = (list, float, int, bool, str)
"""Result types that are never torch tensors (the `hasattr(.., "cpu")` probe is skipped)."""
_NP_TO_V2 = {np.dtype(v): k for k, v in DTYPES.items() if k != "BYTES"}  # dtype.name is slow
DEFAULT_OUTPUT = "output0"


@dataclass
class InferRequest:
    id: str | None
    rows: list[Any]
    output_names: list[str] | None  # None: all outputs
    binary_outputs: set[str] | bool  # True: every output binary


def _fail(msg: str) -> InvalidInput:
    return InvalidInput(f"V2 infer: {msg}")


def _check_shape(name: str, shape: Any) -> list[int]:
    # `type(d) is int` (not isinstance): JSON gives plain ints, and it keeps bools out
    if type(shape) is list and shape:
        for d in shape:
            if type(d) is not int or d < 0:
                break
        else:
            return shape
    if shape == []:
        raise _fail(f"input {name!r}: shape [] has no batch dimension; use [n, ...]")
    raise _fail(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")


_EMPTY = memoryview(b"")


def _from_json_data(name: str, datatype: str, data: Any, count: int) -> np.ndarray[Any, Any]:
    if type(data) is not list:
        raise _fail(f"input {name!r}: data must be a list, got {type(data).__name__}")
    if datatype == "BYTES":
        return _bytes_from_json(name, data, count)
    try:
        # numpy picks the kind (bool, int, float, text) from the values: checked below
        arr = np.asarray(data)
    except ValueError:
        raise _fail(
            f"input {name!r}: data is ragged; it must be flat or a regular nesting"
        ) from None
    kind = arr.dtype.kind
    if kind == "O":
        raise _fail(f"input {name!r}: data is ragged or mixed; expected {datatype} numbers")
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size != count:
        raise _fail(f"input {name!r}: shape needs {count} elements, data has {arr.size}")
    target = _NP_DTYPES[datatype]
    tkind = target.kind
    if count and kind not in _KIND_OK[tkind]:
        got = {"b": "booleans", "i": "integers", "u": "integers", "f": "floats"}.get(kind, "text")
        raise _fail(f"input {name!r}: datatype {datatype} does not accept {got}")
    if tkind in "iu":
        if count:
            low, high = _INT_RANGE[datatype]
            if arr.min() < low or arr.max() > high:
                raise _fail(f"input {name!r}: a value is out of range for {datatype}")
        return arr.astype(target, copy=False)  # in range: the cast cannot overflow
    if tkind == "b" or target.itemsize >= 8:  # BOOL, FP64: every JSON value fits
        return arr.astype(target, copy=False)
    # FP16/FP32 can overflow. JSON has no inf/nan, so an overflow is the only way to get one;
    # errstate (about 1 us) turns numpy's warning into an error we can answer with a 400.
    try:
        with np.errstate(over="raise", invalid="raise"):
            return arr.astype(target, copy=False)
    except FloatingPointError:
        raise _fail(f"input {name!r}: a value is out of range for {datatype}") from None


def _bytes_from_json(name: str, data: list[Any], count: int) -> np.ndarray[Any, Any]:
    try:
        arr = np.asarray(data, dtype=np.object_)
    except ValueError:
        raise _fail(
            f"input {name!r}: data is ragged; it must be flat or a regular nesting"
        ) from None
    arr = arr.reshape(-1)
    if arr.size != count:
        raise _fail(f"input {name!r}: shape needs {count} elements, data has {arr.size}")
    for v in arr:
        if not isinstance(v, str):
            raise _fail(f"input {name!r}: BYTES data must be strings, got {type(v).__name__}")
    return arr


def _from_binary(name: str, datatype: str, raw: bytes, count: int) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        out: list[str] = []
        pos = 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise _fail(f"input {name!r}: truncated BYTES element length")
            (n,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + n > len(raw):
                raise _fail(f"input {name!r}: a BYTES element runs past the binary data")
            out.append(raw[pos : pos + n].decode("utf-8", "replace"))
            pos += n
        arr = np.empty(len(out), dtype=np.object_)
        arr[:] = out
    else:
        dt = np.dtype(DTYPES[datatype]).newbyteorder("<")
        if len(raw) != count * dt.itemsize:
            raise _fail(
                f"input {name!r}: binary data has {len(raw)} bytes; shape and {datatype} "
                f"need {count * dt.itemsize}"
            )
        arr = np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="), copy=False)
    if arr.size != count:
        raise _fail(f"input {name!r}: shape needs {count} elements, data has {arr.size}")
    return arr


def parse_infer(
    body: bytes, header_length: int | None, declared: dict[str, dict[str, Any]]
) -> InferRequest:
    """An infer request's body (JSON, or JSON then binary tensors) -> rows and output choices.
    `declared`: the model's inputs by name (empty: any input is taken)."""
    head, binary = _split_body(body, header_length)
    req = loads_object(head, "V2 infer")
    arrays, n_rows = _parse_inputs(req.get("inputs"), binary, declared)
    names, binary_out = _parse_outputs(req)
    rid = req.get("id")
    return InferRequest(
        str(rid) if rid is not None else None, _rows(arrays, n_rows), names, binary_out
    )


def _split_body(body: bytes, header_length: int | None) -> tuple[bytes, memoryview]:
    """(JSON head, binary tail) per the `Inference-Header-Content-Length` header."""
    if header_length is None:
        return body, _EMPTY
    if header_length < 0 or header_length > len(body):
        raise _fail(f"Inference-Header-Content-Length {header_length} exceeds the body")
    return body[:header_length], memoryview(body)[header_length:]


def _parse_inputs(
    inputs: Any, binary: memoryview, declared: dict[str, dict[str, Any]]
) -> tuple[dict[str, np.ndarray[Any, Any]], int]:
    """Every input tensor as an array of its shape, and the row count they share."""
    if not isinstance(inputs, list) or not inputs:
        raise _fail('the body needs a non-empty "inputs" list')
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    n_rows: int | None = None
    offset = 0
    for i, tensor in enumerate(inputs):
        name, arr, offset = _parse_tensor(i, tensor, binary, offset, declared)
        if name in arrays:
            raise _fail(f"input {name!r} given twice")
        arrays[name] = arr
        if n_rows is None:
            n_rows = arr.shape[0]
        elif arr.shape[0] != n_rows:
            raise _fail(f"input {name!r}: {arr.shape[0]} rows, but other inputs have {n_rows}")
    if declared and len(arrays) < len(declared):
        _check_missing(arrays, declared)
    if not n_rows:
        raise _fail("inputs have 0 rows")
    return arrays, n_rows


def _parse_tensor(
    i: int, tensor: Any, binary: memoryview, offset: int, declared: dict[str, dict[str, Any]]
) -> tuple[str, np.ndarray[Any, Any], int]:
    """One input: (name, array, offset of the next binary tensor)."""
    if not isinstance(tensor, dict):
        raise _fail(f"inputs[{i}] must be an object")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(f"inputs[{i}] needs a string name")
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise _fail(
            f"input {name!r}: unknown datatype {datatype!r}; expected one of {', '.join(DTYPES)}"
        )
    shape = _check_shape(name, tensor.get("shape"))
    if declared:
        _check_declared(name, datatype, shape, declared)
    count = math.prod(shape)
    params = tensor.get("parameters")
    size = params.get("binary_data_size") if params and isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise _fail(f"input {name!r}: binary_data_size {size!r} runs past the body")
        arr = _from_binary(name, datatype, bytes(binary[offset : offset + size]), count)
        offset += size
    elif "data" in tensor:
        arr = _from_json_data(name, datatype, tensor["data"], count)
    else:
        raise _fail(f"input {name!r} has no data")
    return name, arr.reshape(shape), offset


def _check_missing(
    arrays: dict[str, np.ndarray[Any, Any]], declared: dict[str, dict[str, Any]]
) -> None:
    missing = [n for n in declared if n not in arrays and not declared[n].get("optional")]
    if missing:
        raise _fail(f"missing input(s) {', '.join(map(repr, missing))}")


def _parse_outputs(req: dict[str, Any]) -> tuple[list[str] | None, set[str] | bool]:
    """(requested output names or None for all, which outputs come back binary)."""
    params = req.get("parameters") or {}
    binary_out: set[str] | bool = bool(
        isinstance(params, dict) and params.get("binary_data_output")
    )
    outputs_req = req.get("outputs")
    if outputs_req is None:
        return None, binary_out
    if not isinstance(outputs_req, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs_req
    ):
        raise _fail('"outputs" must be a list of objects with a name')
    names = [o["name"] for o in outputs_req]
    if binary_out is False:
        binary_out = {
            o["name"] for o in outputs_req if (o.get("parameters") or {}).get("binary_data")
        }
    return names, binary_out


def _check_declared(
    name: str, datatype: str, shape: list[int], declared: dict[str, dict[str, Any]]
) -> None:
    spec = declared.get(name)
    if spec is None:
        raise _fail(f"unknown input {name!r}; the model takes {', '.join(map(repr, declared))}")
    want_type = spec.get("datatype")
    if want_type and want_type != datatype:
        raise _fail(f"input {name!r}: datatype {datatype}, the model takes {want_type}")
    want = spec.get("shape")
    if want is None:
        return
    ok = len(want) == len(shape)
    if ok:
        for w, d in zip(want, shape, strict=True):
            if w != -1 and w != d:
                ok = False
                break
    if not ok:
        raise _fail(f"input {name!r}: shape {shape} does not match the model's {want}")


def _rows(arrays: dict[str, np.ndarray[Any, Any]], n: int) -> list[Any]:
    if len(arrays) == 1:
        (arr,) = arrays.values()
        return _split(arr)
    columns = {k: _split(a) for k, a in arrays.items()}
    return [{k: c[i] for k, c in columns.items()} for i in range(n)]


def _split(arr: np.ndarray[Any, Any]) -> list[Any]:
    """The rows of one input: Python scalars for shape [n] (`tolist`), else numpy slices
    (`list()` iterates the first axis in C; both beat indexing row by row)."""
    if arr.ndim == 1 and arr.dtype != np.object_:
        rows: list[Any] = arr.tolist()
        return rows
    return list(arr)


def _tensor(name: str, values: list[Any]) -> tuple[str, np.ndarray[Any, Any]]:
    first = values[0]
    kind = type(first)
    if kind is not np.ndarray and kind not in _PLAIN and hasattr(first, "cpu"):  # torch tensors
        values = [v.detach().cpu().numpy() for v in values]
        first, kind = values[0], np.ndarray
    try:
        if kind is np.ndarray:
            # one row (the common single-row request): a view, not a copy through np.stack
            arr = first[np.newaxis] if len(values) == 1 else np.stack(values)
        else:
            arr = np.asarray(values)
    except ValueError as exc:
        raise ModelError(f"output {name!r}: results do not stack into a tensor: {exc}") from None
    if arr.dtype.kind in "USO":
        flat = arr.reshape(-1)
        obj = np.empty(flat.shape, dtype=np.object_)
        obj[:] = [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
        return "BYTES", obj.reshape(arr.shape)
    dtype = _NP_TO_V2.get(arr.dtype)
    if dtype is None:
        raise ModelError(f"output {name!r}: numpy dtype {arr.dtype} has no V2 datatype")
    return dtype, arr


def _binary(datatype: str, arr: np.ndarray[Any, Any]) -> bytes:
    if datatype == "BYTES":
        parts = []
        for v in arr.reshape(-1):
            b = v.encode() if isinstance(v, str) else bytes(v)
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def encode_infer(
    model_name: str, req: InferRequest, results: list[Any], default_output: str
) -> tuple[bytes, int | None]:
    """(body, json header length when binary outputs follow, else None)."""
    if results and isinstance(results[0], dict):
        keys = list(results[0])
        columns = {k: [r[k] for r in results] for k in keys}
    else:
        columns = {default_output: results}
    names = req.output_names or list(columns)
    for n in names:
        if n not in columns:
            raise InvalidInput(
                f"V2 infer: unknown output {n!r}; the model gives {', '.join(map(repr, columns))}"
            )
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for n in names:
        datatype, arr = _tensor(n, columns[n])
        out: dict[str, Any] = {"name": n, "datatype": datatype, "shape": list(arr.shape)}
        if req.binary_outputs is True or (
            isinstance(req.binary_outputs, set) and n in req.binary_outputs
        ):
            blob = _binary(datatype, arr)
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            out["data"] = arr.reshape(-1).tolist()
        elif datatype == "FP16":
            out["data"] = arr.reshape(-1).astype(np.float32)
        else:
            # a view when `arr` is contiguous; orjson takes a non-contiguous one via tolist
            out["data"] = arr.reshape(-1)
        outputs.append(out)
    response: dict[str, Any] = {"model_name": model_name, "outputs": outputs}
    if req.id is not None:
        response["id"] = req.id
    head = dumps(response)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def model_metadata(name: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> bytes:
    return dumps(
        {"name": name, "versions": ["1"], "platform": "shoal", "inputs": inputs, "outputs": outputs}
    )


def server_metadata(version: str) -> bytes:
    return dumps({"name": "shoal", "version": version, "extensions": ["binary_tensor_data"]})
