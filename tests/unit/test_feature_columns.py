"""Declared columns, coercion of types found in the wild, and vocabularies (no Spark)."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.features.columns import (
    ColumnTypeError,
    FeatureError,
    MissingColumnError,
    coerce_arrow,
    coerce_table,
    rows_to_table,
)
from recsys.features.vocabulary import Vocabulary


def test_booleans_arrive_as_bools_strings_or_zero_one() -> None:
    expected = [True, False, None]
    assert coerce_arrow(pa.array([True, False, None]), "b", "bool").to_pylist() == expected
    assert coerce_arrow(pa.array(["true", "FALSE", None]), "b", "bool").to_pylist() == expected
    assert coerce_arrow(pa.array([1, 0, None]), "b", "bool").to_pylist() == expected
    with pytest.raises(ColumnTypeError, match="column 'b': value 'yes' is not true or false"):
        coerce_arrow(pa.array(["true", "yes"]), "b", "bool")
    with pytest.raises(ColumnTypeError, match="column 'b': value 2 is not 0 or 1"):
        coerce_arrow(pa.array([1, 2]), "b", "bool")


def test_timestamps_as_floats_become_int64_and_nan_is_null() -> None:
    out = coerce_arrow(pa.array([1612396800.0, 7.9, -7.9, float("nan"), None]), "t", "int64")
    assert out.type == pa.int64()
    assert out.to_pylist() == [1612396800, 7, -7, None, None]


def test_a_type_that_cannot_be_read_names_the_column() -> None:
    with pytest.raises(ColumnTypeError, match="column 'like_timestamp' has type string"):
        coerce_arrow(pa.array(["soon"]), "like_timestamp", "int64")
    with pytest.raises(ColumnTypeError, match="column 'tweet_id' has type double"):
        coerce_arrow(pa.array([1.5]), "tweet_id", "string")
    # integer ids are read as their digits
    assert coerce_arrow(pa.array([7, None]), "tweet_id", "string").to_pylist() == ["7", None]


def test_records_with_mixed_python_types_and_missing_keys() -> None:
    declared = {"flag": "bool", "ts": "int64", "name": "string"}
    rows = [
        {"flag": True, "ts": 5, "name": "a"},
        {"flag": "false", "ts": 6.0},
        {"flag": None, "ts": None, "name": None},
    ]
    table = rows_to_table(rows, declared, "batch")
    assert table.schema.types == [pa.bool_(), pa.int64(), pa.string()]
    assert table.to_pydict() == {
        "flag": [True, False, None],
        "ts": [5, 6, None],
        "name": ["a", None, None],
    }
    with pytest.raises(MissingColumnError, match="batch: missing column 'other'"):
        rows_to_table(rows, {**declared, "other": "string"}, "batch")
    with pytest.raises(FeatureError, match="no rows"):
        rows_to_table([], declared, "batch")
    with pytest.raises(MissingColumnError, match="missing columns 'x', 'y'"):
        coerce_table(pa.table({"a": [1]}), {"x": "int64", "y": "int64"}, "t")


def _vocab() -> Vocabulary:
    return Vocabulary(pa.array(["b", "a", "c"]), np.array([5, 3, 3]))


def test_vocabulary_lookup_missing_unknown_known() -> None:
    vocab = _vocab()
    assert vocab.size == 5
    got = vocab.lookup(pa.array(["a", "zzz", None, "", "b", "c"]))
    assert got.tolist() == [3, 1, 0, 0, 2, 4]


def test_vocabulary_lists_are_truncated_and_zero_padded() -> None:
    got = _vocab().lookup_lists(pa.array(["a\tb\tc\tb", "zzz", None, "", "c"]), "\t", 3)
    assert got.to_pylist() == [[3, 2, 4], [1, 0, 0], [0, 0, 0], [0, 0, 0], [4, 0, 0]]


def test_vocabulary_round_trips_through_parquet(tmp_path: Path) -> None:
    path = tmp_path / "v.parquet"
    _vocab().save(path)
    loaded = Vocabulary.load(path)
    assert loaded.values.to_pylist() == ["b", "a", "c"]
    assert loaded.counts.tolist() == [5, 3, 3]
    assert pq.read_table(path)["index"].to_pylist() == [2, 3, 4]
    path.write_bytes(b"not parquet")
    with pytest.raises(FeatureError, match=r"cannot read vocabulary .*v\.parquet"):
        Vocabulary.load(path)
