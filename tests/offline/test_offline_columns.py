"""Arrow tables to model rows and results back, for every row format (no Ray needed)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from shoal.offline.columns import error_array, prediction_array, rows_from_table

TABLE = pa.table({"a": [1.0, 2.0], "b": [10, 20], "t": ["x", "y"]})


def test_numeric_columns_become_feature_vectors() -> None:
    rows = rows_from_table(TABLE, ["a", "b"], "auto")
    assert [r.tolist() for r in rows] == [[1.0, 10.0], [2.0, 20.0]]


def test_mixed_columns_become_lists_and_dicts() -> None:
    assert rows_from_table(TABLE, ["a", "t"], "list") == [[1.0, "x"], [2.0, "y"]]
    assert rows_from_table(TABLE, ["b", "t"], "dict") == [{"b": 10, "t": "x"}, {"b": 20, "t": "y"}]


def test_one_column_gives_its_values_and_fixed_lists_give_arrays() -> None:
    assert rows_from_table(TABLE, ["t"], "auto") == ["x", "y"]
    vec = pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0, 3.0, 4.0]), 2)
    rows = rows_from_table(pa.table({"v": vec}), ["v"], "value")
    assert [r.tolist() for r in rows] == [[1.0, 2.0], [3.0, 4.0]]


def test_missing_column_and_bad_value_format_are_clear() -> None:
    with pytest.raises(KeyError, match=r"\['zz'\] not in the dataset"):
        rows_from_table(TABLE, ["zz"], "auto")
    with pytest.raises(ValueError, match="needs one input column"):
        rows_from_table(TABLE, ["a", "b"], "value")


def test_equal_arrays_make_a_fixed_size_column_with_nulls_for_failures() -> None:
    values = [np.array([1.0, 2.0]), ValueError("bad"), np.array([3.0, 4.0])]
    arr = prediction_array(values, [False, True, False])
    assert pa.types.is_fixed_size_list(arr.type)
    assert arr.to_pylist() == [[1.0, 2.0], None, [3.0, 4.0]]


def test_other_results_are_kept_as_values() -> None:
    arr = prediction_array([{"label": "a", "p": 0.5}, {"label": "b", "p": 0.7}], [False, False])
    assert arr.to_pylist() == [{"label": "a", "p": 0.5}, {"label": "b", "p": 0.7}]
    with pytest.raises(ValueError, match="same type"):
        prediction_array([{"label": "a"}, np.float32(0.5)], [False, False])
    assert prediction_array([1, 2, 3], [False, False, False]).to_pylist() == [1, 2, 3]
    assert error_array([None, "x"]).type == pa.string()
