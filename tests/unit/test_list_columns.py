"""List columns declared `list<string>` / `list<int64>`: read as lists (parquet), refused in
CSV, coerced online, and encoded by the `category` step's multi-valued path."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.features.columns import ColumnTypeError, FeatureError, coerce_arrow, rows_to_table
from recsys.features.ops import build_op
from recsys.features.source import check_parquet_files, inspect_part
from recsys.features.vocabulary import Vocabulary


def _parquet(tmp_path: Path, genres: pa.Array) -> str:
    path = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": ["1", "2"], "genres": genres}), path)
    return str(path)


def test_a_parquet_list_column_is_read_as_declared(tmp_path: Path) -> None:
    path = _parquet(tmp_path, pa.array([["Drama", "War"], None], pa.list_(pa.string())))
    rows, _ = check_parquet_files(path, {"genres": "list<string>"}, ["item_id", "genres"])
    assert rows == 2
    # integer elements read as strings, as a scalar string column takes integers
    ints = _parquet(tmp_path, pa.array([[1, 2], []], pa.list_(pa.int32())))
    check_parquet_files(ints, {"genres": "list<string>"}, ["genres"])
    check_parquet_files(ints, {"genres": "list<int64>"}, ["genres"])


def test_a_list_column_declared_otherwise_says_how_to_declare_it(tmp_path: Path) -> None:
    path = _parquet(tmp_path, pa.array([["Drama"], ["War"]], pa.list_(pa.string())))
    with pytest.raises(ColumnTypeError) as e:
        check_parquet_files(path, {"genres": "string"}, ["genres"])
    assert str(e.value) == (
        "column 'genres' has type list<element: string>, which cannot be read as the declared "
        "string (accepted: string, integer); declare it list<string> or list<int64> to read "
        "it as a list"
    )
    with pytest.raises(
        ColumnTypeError, match=r"declared list<int64> \(accepted: lists of integer\)"
    ):
        check_parquet_files(path, {"genres": "list<int64>"}, ["genres"])
    flat = _parquet(tmp_path, pa.array(["Drama|War", "War"]))
    with pytest.raises(
        ColumnTypeError, match=r"type string, which cannot be read as the declared list<string>"
    ):
        check_parquet_files(flat, {"genres": "list<string>"}, ["genres"])


def test_invalid_utf8_inside_a_list_names_the_column_and_row(tmp_path: Path) -> None:
    values = pa.array([b"Drama", b"W\xffr", b"Comedy"], pa.binary()).cast(pa.string(), safe=False)
    genres = pa.ListArray.from_arrays(pa.array([0, 1, 3], pa.int32()), values)
    path = _parquet(tmp_path, genres)
    with pytest.raises(
        FeatureError, match=r"column 'genres' holds invalid UTF-8 in 1 row \(the first is row 2\)"
    ):
        check_parquet_files(path, {"genres": "list<string>"}, ["genres"])


def test_csv_has_no_list_type(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("item_id,genres\n1,Drama|War\n")
    dataset = {"format": "csv", "columns": {"item_id": "string", "genres": "list<string>"}}
    with pytest.raises(
        FeatureError,
        match=r"'genres' is declared list<string>, but CSV has no list type: declare it string",
    ):
        inspect_part(str(path), dataset, ["genres"])


def test_online_rows_with_lists_are_coerced() -> None:
    table = rows_to_table(
        [{"genres": ["Drama", "War"]}, {"genres": None}, {"genres": []}],
        {"genres": "list<string>"},
        "request",
    )
    assert table["genres"].type == pa.list_(pa.string())
    assert table["genres"].to_pylist() == [["Drama", "War"], None, []]
    ints = coerce_arrow(pa.array([[3, 4]], pa.large_list(pa.int16())), "ids", "list<int64>")
    assert ints.type == pa.list_(pa.int64()) and ints.to_pylist() == [[3, 4]]
    with pytest.raises(ColumnTypeError, match="cannot be read as the declared list<int64>"):
        coerce_arrow(pa.array([["a"]]), "ids", "list<int64>")


VOCAB = Vocabulary(pa.array(["Drama", "War", "Comedy"]), np.array([5, 3, 1]))


def test_category_encodes_a_list_column_like_a_split_string() -> None:
    lists = pa.table(
        {
            "genres": pa.array(
                [["War", "Drama", "Noir"], None, [], ["Comedy", ""]], pa.list_(pa.string())
            )
        }
    )
    op = build_op("genres", {"op": "category", "columns": ["genres"], "max_len": 2})
    op.check_arrow(lists)
    op.load_state({}, {"genres": VOCAB})
    got = op.transform_arrow(lists)["genres"].to_pylist()
    # known values from 2 by frequency, unknown 1, missing and padding 0, truncated to 2
    assert got == [[3, 2], [0, 0], [0, 0], [4, 0]]
    split = pa.table({"genres": ["War|Drama|Noir", None, "", "Comedy|"]})
    op_split = build_op(
        "genres", {"op": "category", "columns": ["genres"], "split": "|", "max_len": 2}
    )
    op_split.load_state({}, {"genres": VOCAB})
    assert op_split.transform_arrow(split)["genres"].to_pylist() == got
    assert op.describe("genres").kind == "multi_categorical"
    assert op.describe("genres").max_len == 2


def test_category_says_how_to_configure_a_list_or_string_column() -> None:
    lists = pa.table({"genres": pa.array([["War"]], pa.list_(pa.string()))})
    single = build_op("g", {"op": "category", "columns": ["genres"]})
    with pytest.raises(
        ColumnTypeError, match=r"step 'g' \(category\): column 'genres' is a list; set max_len"
    ):
        single.check_arrow(lists)
    strings = pa.table({"genres": ["War|Drama"]})
    multi = build_op("g", {"op": "category", "columns": ["genres"], "max_len": 3})
    with pytest.raises(ColumnTypeError, match="is a string and max_len is set without split"):
        multi.check_arrow(strings)
    with pytest.raises(FeatureError, match="max_len must be >= 1"):
        build_op("g", {"op": "category", "columns": ["genres"], "max_len": 0})
