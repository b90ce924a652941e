"""Arrow <-> model rows and results, without per-value Python work where the data allows.

Ray Data hands the actor an Arrow table; the input columns pass through to the output
untouched (zero copy), numeric feature columns become one 2-D array whose rows are views, and
equal-shaped numeric predictions become one fixed-size-list column built from a single buffer.
The error column is always Arrow `string`, so every batch writes the same schema.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa

RowFormat = Literal["auto", "value", "list", "dict"]


def native(value: Any) -> Any:
    """numpy scalars and arrays become what a JSON request would carry."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def rows_from_table(table: pa.Table, columns: list[str], fmt: RowFormat) -> list[Any]:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise KeyError(f"input columns {missing} not in the dataset (has {table.column_names})")
    if fmt == "auto":
        fmt = "value" if len(columns) == 1 else "list"
    if fmt == "value":
        if len(columns) != 1:
            raise ValueError(f"row format 'value' needs one input column, got {columns}")
        col = table.column(columns[0])
        if pa.types.is_fixed_size_list(col.type) and pa.types.is_primitive(col.type.value_type):
            flat = col.combine_chunks().flatten().to_numpy(zero_copy_only=False)
            return list(flat.reshape(len(col), col.type.list_size))
        values: list[Any] = col.to_pylist()
        return values
    if fmt == "dict":
        rows: list[Any] = table.select(columns).to_pylist()
        return rows
    types = [table.schema.field(c).type for c in columns]
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in types) and not any(
        table.column(c).null_count for c in columns
    ):
        block = np.column_stack([table.column(c).to_numpy() for c in columns])
        return list(block)
    return [list(r.values()) for r in table.select(columns).to_pylist()]


def prediction_array(values: list[Any], failed: list[bool]) -> pa.Array:
    """One column of predictions; failed rows are null."""
    good = [v for v, bad in zip(values, failed, strict=True) if not bad]
    if good and all(isinstance(v, np.ndarray) for v in good):
        shapes = {v.shape for v in good}
        if len(shapes) == 1 and len(next(iter(shapes))) == 1 and good[0].dtype.kind in "fiub":
            return _fixed_size(values, failed, good)
    items = [None if bad else native(v) for v, bad in zip(values, failed, strict=True)]
    try:
        return pa.array(items)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(
            f"the model's results do not fit one column (every row's result must have the "
            f"same type): {exc}"
        ) from exc


def _fixed_size(values: list[Any], failed: list[bool], good: list[Any]) -> pa.Array:
    width = good[0].shape[0]
    dense = np.zeros((len(values), width), dtype=good[0].dtype)
    if any(failed):
        dense[~np.asarray(failed)] = np.stack(good)
    else:
        dense[:] = np.stack(good)
    mask = pa.array(failed, type=pa.bool_()) if any(failed) else None
    return pa.FixedSizeListArray.from_arrays(pa.array(dense.reshape(-1)), width, mask=mask)


def error_array(errors: list[str | None]) -> pa.Array:
    return pa.array(errors, type=pa.string())
