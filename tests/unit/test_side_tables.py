"""Side tables (a user table, an item catalogue): their config, and the checks made before
Spark starts. The Spark join itself is tested in tests/integration/test_side_tables_spark.py."""

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.features.columns import FeatureError, MissingColumnError
from recsys.features.side_tables import (
    declared_columns,
    inspect_side,
    needed_sides,
    side_tables,
)
from tests.conftest import compose_preprocess

RATINGS = {"user_id": "string", "item_id": "string", "rating": "float64"}


def _dataset(**sides: Any) -> dict[str, Any]:
    return {"name": "t", "path": "x", "columns": dict(RATINGS), **sides}


def _items(path: str = "items.parquet", **extra: Any) -> dict[str, Any]:
    columns = {"item_id": "string", "genres": "list<string>", "year": "int64"}
    return {"path": path, "key": "item_id", "columns": columns, **extra}


def test_side_columns_join_the_declared_columns() -> None:
    users = {"path": "u", "key": "user_id", "columns": {"user_id": "string", "age": "int64"}}
    dataset = _dataset(users=users, items=_items())
    assert declared_columns(dataset) == {
        **RATINGS,
        "age": "int64",
        "genres": "list<string>",
        "year": "int64",
    }
    tables = side_tables(dataset)
    assert [(t.role, t.key, t.joined) for t in tables] == [
        ("users", "user_id", ["age"]),
        ("items", "item_id", ["genres", "year"]),
    ]
    # a side table none of whose columns is read is not read at all
    assert [t.role for t in needed_sides(tables, ["user_id", "item_id", "year"])] == ["items"]
    assert declared_columns(_dataset()) == RATINGS


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (
            {"key": "movie"},
            r"dataset\.items\.key 'movie' is not declared in dataset\.items\.columns",
        ),
        (
            {"key": "movie", "columns": {"movie": "string", "year": "int64"}},
            r"dataset\.items\.key 'movie' is not a column of the interactions",
        ),
        (
            {"columns": {"item_id": "int64", "year": "int64"}},
            r"key 'item_id' is declared int64 in dataset\.items\.columns and string in "
            r"dataset\.columns",
        ),
        (
            {"columns": {"item_id": "string", "rating": "float64"}},
            r"dataset\.items\.columns\.rating is also a column of the interactions",
        ),
        ({"columns": {"item_id": "string"}}, "declares no column besides the key"),
        ({"columns": {"item_id": "string", "year": "date"}}, r"items\.columns\.year: type 'date'"),
        ({"missing_keys": "drop"}, r"missing_keys 'drop' is not one of error, null"),
        ({"path": ""}, r"dataset\.items\.path must be set"),
    ],
)
def test_a_bad_side_table_config_names_the_key(items: dict[str, Any], message: str) -> None:
    with pytest.raises(FeatureError, match=message):
        side_tables(_dataset(items={**_items(), **items}))


def test_two_side_tables_may_not_add_the_same_column() -> None:
    users = {"path": "u", "key": "user_id", "columns": {"user_id": "string", "year": "int64"}}
    with pytest.raises(
        FeatureError, match=r"items\.columns\.year is also a column of dataset\.users"
    ):
        side_tables(_dataset(users=users, items=_items()))


def _write_items(path: Path, ids: list[str]) -> None:
    table = pa.table(
        {
            "item_id": ids,
            "genres": pa.array([["Drama"]] * len(ids), pa.list_(pa.string())),
            "year": list(range(len(ids))),
        }
    )
    pq.write_table(table, path)


def test_a_key_on_two_rows_is_refused_before_spark(tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    _write_items(path, ["1", "2", "2", "3", "3", "3"])
    (table,) = side_tables(_dataset(items=_items(str(path))))
    with pytest.raises(FeatureError) as e:
        inspect_side(table, ["genres"])
    assert str(e.value) == (
        f"dataset.items {path}: key column 'item_id' holds 2 values on more than one row "
        "('2', '3'); a side table needs one row per key"
    )
    _write_items(path, ["1", "2", "3"])
    info = inspect_side(table, ["genres"])
    assert info.rows == 3


def test_a_side_file_without_its_key_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    pq.write_table(pa.table({"movie": ["1"], "year": [1995]}), path)
    (table,) = side_tables(_dataset(items=_items(str(path))))
    with pytest.raises(MissingColumnError, match=rf"input {path}: missing column 'item_id'"):
        inspect_side(table, ["year"])


def test_a_side_column_of_the_wrong_type_is_named(tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": ["1"], "genres": ["Drama|Comedy"], "year": [1]}), path)
    (table,) = side_tables(_dataset(items=_items(str(path))))
    with pytest.raises(FeatureError, match=r"column 'genres' has type string, which cannot"):
        inspect_side(table, ["genres"])


def test_the_movielens_dataset_composes_with_its_side_tables(tmp_path: Path) -> None:
    from recsys.preprocess import build_pipeline

    cfg = compose_preprocess(
        ["dataset=movielens100k", "features=movielens100k", "split.method=per_user_time"],
        tmp_path,
    )
    assert [t.role for t in side_tables(cfg.dataset)] == ["users", "items"]
    pipeline = build_pipeline(cfg)
    # the features read columns of all three tables
    assert {"rating", "age", "gender", "genres", "release_year"} <= set(pipeline.raw_columns)
    assert pipeline.raw_columns["genres"] == "list<string>"


def test_the_documented_side_tables_compose_as_written(tmp_path: Path) -> None:
    import re
    import textwrap

    from hydra import compose, initialize_config_dir

    from recsys.config import CONF_DIR
    from tests.conftest import REPO

    text = (REPO / "docs" / "features.md").read_text()
    section = text.split("## Side tables and list columns", 1)[1].split("\n## ", 1)[0]
    dataset = textwrap.dedent(re.findall(r"```yaml\n(.*?)```", section, re.S)[0])
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "ratings_with_sides.yaml").write_text(dataset)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="preprocess",
            overrides=[f"hydra.searchpath=[file://{tmp_path}]", "dataset=ratings_with_sides"],
        )
    users, items = side_tables(cfg.dataset)
    assert (users.format, users.key, items.key) == ("csv", "user_id", "item_id")
    assert declared_columns(cfg.dataset)["genres"] == "list<string>"
