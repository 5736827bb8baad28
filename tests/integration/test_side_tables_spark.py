"""Side tables joined on Spark and list columns read natively, through the MovieLens configs
(conf/dataset/movielens100k.yaml, conf/features/movielens100k.yaml) on tiny made-up tables."""

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.features.columns import FeatureError
from recsys.features.pipeline import FeaturePipeline
from recsys.features.side_tables import join_side, read_side, side_tables
from recsys.features.source import inspect_part
from recsys.preprocess import preprocess
from tests.conftest import compose_preprocess

pytestmark = pytest.mark.integration

USERS = 6
ITEMS = 5
GENRES = [["Drama"], ["Comedy", "Drama"], ["War"], [], ["Sci-Fi", "War", "Drama"]]


def _tables(tmp_path: Path) -> dict[str, Path]:
    rows = [
        {"user_id": f"u{u}", "item_id": f"m{(u + k) % ITEMS}", "rating": float(1 + (u * k) % 5),
         "timestamp": 1000 * u + k}
        for u in range(USERS) for k in range(ITEMS)
    ]  # fmt: skip
    paths = {
        "interactions": tmp_path / "interactions.parquet",
        "users": tmp_path / "users.csv",
        "items": tmp_path / "items.parquet",
    }
    pq.write_table(pa.Table.from_pylist(rows), paths["interactions"])
    lines = ["user_id,age,gender,occupation,zip_code"]
    lines += [f"u{u},{15 + 9 * u},{'MF'[u % 2]},job{u % 3},0{u}" for u in range(USERS)]
    paths["users"].write_text("\n".join(lines) + "\n")
    items = {
        "item_id": [f"m{i}" for i in range(ITEMS)],
        "movie_title": [f"t{i}" for i in range(ITEMS)],
        "release_year": [1990 + i for i in range(ITEMS)],
        "genres": pa.array(GENRES, pa.list_(pa.string())),
    }
    pq.write_table(pa.table(items), paths["items"])
    return paths


def _cfg(paths: dict[str, Path], out: Path, run: Path):
    return compose_preprocess(
        [
            "dataset=movielens100k",
            "features=movielens100k",
            "split.method=per_user_time",
            f"data={paths['interactions']}",
            f"dataset.users.path={paths['users']}",
            "dataset.users.format=csv",
            f"dataset.items.path={paths['items']}",
            f"out={out}",
        ],
        run,
    )


def test_side_tables_and_a_list_column_reach_the_features(spark, tmp_path: Path) -> None:
    paths = _tables(tmp_path)
    out = tmp_path / "out"
    summary = preprocess(_cfg(paths, out, tmp_path / "run"), spark=spark)
    assert sum(summary.rows.values()) == USERS * ITEMS
    # the processed test split equals the online transform of the same rows joined in pandas:
    # each user's latest rating, with its user's and item's side columns
    raw = pq.read_table(paths["interactions"]).to_pandas()
    joined = raw.merge(pd.read_csv(paths["users"], dtype={"zip_code": str}), on="user_id")
    joined = joined.merge(pq.read_table(paths["items"]).to_pandas(), on="item_id")
    latest = joined.sort_values("timestamp").groupby("user_id").tail(1)
    pipeline = FeaturePipeline.load(out / "pipeline")
    expected = pipeline.transform_batch(latest.to_dict("records"))
    got = pq.read_table(out / "test")
    assert got.num_rows == USERS

    def key(table: pa.Table) -> list:
        return sorted(map(str, table.select(expected.column_names).to_pylist()))

    assert key(got) == key(expected)
    genres = {tuple(g) for g in got["genres"].to_pylist()}
    assert any(sum(v > 1 for v in g) >= 2 for g in genres)  # lists, not one value per row
    assert all(len(g) == 6 for g in genres)


def test_repeated_and_missing_keys_are_named(spark, tmp_path: Path) -> None:
    paths = _tables(tmp_path)
    cfg = _cfg(paths, tmp_path / "out", tmp_path / "run")
    users, items = side_tables(cfg.dataset)
    # a repeated key in a CSV side table: found by Spark (pyarrow checks local parquet)
    with paths["users"].open("a") as f:
        f.write("u2,40,F,job0,02\nu3,41,F,job0,03\n")
    info = inspect_part(str(paths["users"]), users.source, ["user_id", "age"])
    with pytest.raises(FeatureError) as e:
        read_side(spark, users, info, ["age"])
    assert str(e.value) == (
        f"dataset.users {paths['users']}: key column 'user_id' holds 2 values on more than "
        "one row ('u2', 'u3'); a side table needs one row per key"
    )
    # an interaction whose item the catalogue lacks
    catalogue = read_side(spark, items, inspect_part(str(paths["items"]), items.source,
                          ["item_id", "genres"]), ["genres"])  # fmt: skip
    interactions = spark.createDataFrame(
        pd.DataFrame({"user_id": ["u1", "u1", "u2", "u3"], "item_id": ["m1", "m9", "m9", None]})
    )
    with pytest.raises(FeatureError) as e:
        join_side(interactions, catalogue, items, "ratings.parquet").count()
    assert str(e.value) == (
        "input ratings.parquet: 3 rows have no match in dataset.items: 1 item_id value missing "
        f"from {paths['items']} ('m9'); 1 with a null item_id; fix the data or set "
        "dataset.items.missing_keys=null to keep them with null side columns"
    )
    items.missing_keys = "null"
    kept = join_side(interactions, catalogue, items, "ratings.parquet").toPandas()
    assert len(kept) == 4
    assert kept["genres"].isna().sum() == 3
