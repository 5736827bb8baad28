"""Offline (Spark) and online (numpy/pyarrow, no Spark) features are identical on the same rows.

Training-serving skew is the silent bug of this field: the same raw row must give the same
indices and the same floats (bit for bit) whether Spark processes it in a batch job or
serving transforms it in a request. These tests fit pipelines in Spark, then compare Spark's
`transform` with `transform_batch` on rows chosen to hit every edge: hashes and crosses,
values unseen in training, missing values, empty strings, unicode, scaling outside the
training range, booleans as strings and timestamps as floats.
"""

import math
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.features.pipeline import FeaturePipeline
from recsys.preprocess import build_pipeline
from tests.conftest import compose_preprocess

pytestmark = pytest.mark.integration


def assert_identical(offline: pa.Table, online: pa.Table) -> None:
    """Same columns, same Arrow types, same values (floats compared bit for bit)."""
    offline = offline.sort_by("rid")
    online = online.sort_by("rid")
    assert offline.column_names == online.column_names
    for name in offline.column_names:
        a, b = offline[name].combine_chunks(), online[name].combine_chunks()
        assert a.type.equals(b.type) or (pa.types.is_list(a.type) and pa.types.is_list(b.type)), (
            f"{name}: {a.type} != {b.type}"
        )
        if pa.types.is_floating(a.type):
            assert np.array_equal(
                a.to_numpy(zero_copy_only=False).view(np.uint32),
                b.to_numpy(zero_copy_only=False).view(np.uint32),
            ), name
        else:
            assert a.to_pylist() == b.to_pylist(), name


# ------------------------------------------------------------- RecSys 2021 (W&D)


def _tricky_rows(raw_test: pa.Table) -> list[dict]:
    """Real test rows plus rows built to hit unknown, missing, empty and unicode values."""
    rows = raw_test.slice(0, 200).to_pylist()
    template = dict(rows[0])
    edits = [
        {"enaging_user_id": "NEVER-SEEN-USER", "engaged_with_user_id": "ALSO-NEW"},
        {"tweet_id": "new tweet", "language": "ünïcödé-语言", "hashtags": "新\tnew\t"},
        {"present_media": "GIF\tGIF\tVideo", "tweet_type": "Unknown"},
        {"present_media": None, "hashtags": None, "present_domains": None, "present_links": None},
        {"present_media": "", "hashtags": "", "language": ""},
        {"engaged_with_user_follower_count": None, "enaging_user_following_count": None},
        {"engaged_with_user_follower_count": 10**9, "enaging_user_follower_count": 0},
        {
            "reply_timestamp": None,
            "like_timestamp": None,
            "retweet_timestamp": None,
            "retweet_with_comment_timestamp": None,
        },
        {"engagee_follows_engager": None, "enaging_user_is_verified": None},
        {"hashtags": "\t".join(f"h{i}" for i in range(12))},  # longer than max_len
    ]
    return rows + [{**template, **e} for e in edits]


def _wild(row: dict) -> dict:
    """The same row as it may arrive in the wild: booleans as strings, timestamps as floats."""
    out = dict(row)
    for key, value in row.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif key.endswith("_timestamp") and value is not None:
            out[key] = float(value)
    return out


@pytest.fixture(scope="module")
def wnd(spark, recsys_raw: Path, tmp_path_factory: pytest.TempPathFactory):
    cfg = compose_preprocess(["features=recsys2021_wnd"], tmp_path_factory.mktemp("run"))
    pipeline = build_pipeline(cfg)
    pipeline.fit(spark.read.parquet(str(recsys_raw / "train")))
    return pipeline


def test_wnd_offline_equals_online_on_tricky_rows(spark, wnd, recsys_raw: Path) -> None:
    rows = [{**r, "rid": i} for i, r in enumerate(_tricky_rows(pq.read_table(recsys_raw / "test")))]
    table = pa.Table.from_pylist(rows)
    offline = wnd.transform(spark.createDataFrame(table), keep=["rid"]).toArrow()
    online = wnd.transform_batch(rows, keep=["rid"])
    assert_identical(offline, online)
    # the edge rows really hit the edges
    by_rid = online.sort_by("rid").to_pylist()
    new_user, new_tweet, odd_media, nulls, empty = by_rid[200:205]
    assert new_user["enaging_user_id"] == 1 and new_user["engaged_with_user_id"] == 1
    assert new_tweet["tweet_id"] == 1 and new_tweet["language"] == 1
    assert odd_media["present_media"] == 3  # GIF_GIF, the first two media
    assert odd_media["tweet_type"] == 1
    assert nulls["present_media"] == 0 and nulls["hashtags"] == [0, 0, 0, 0]
    assert nulls["len_hashtags"] == 0.0
    assert empty["language"] == 0
    assert by_rid[206]["engaged_with_user_follower_count"] == 8  # >= 1e7: the last bin
    assert by_rid[207]["label"] == 0.0
    assert len(by_rid[209]["hashtags"]) == 4
    assert {r["present_media_language"] for r in by_rid} - {0} <= set(range(1, 600))


def test_wnd_wild_types_give_the_same_features(spark, wnd, recsys_raw: Path) -> None:
    rows = [{**r, "rid": i} for i, r in enumerate(_tricky_rows(pq.read_table(recsys_raw / "test")))]
    wild = [_wild(r) for r in rows]
    offline = wnd.transform(spark.createDataFrame(pa.Table.from_pylist(wild)), keep=["rid"])
    online_wild = wnd.transform_batch(wild, keep=["rid"])
    assert_identical(offline.toArrow(), online_wild)
    assert_identical(online_wild, wnd.transform_batch(rows, keep=["rid"]))


def test_a_saved_and_loaded_pipeline_transforms_identically(
    spark, wnd, recsys_raw: Path, tmp_path: Path
) -> None:
    wnd.save(tmp_path / "pipeline")
    assert not list((tmp_path / "pipeline").rglob("*.pkl"))
    loaded = FeaturePipeline.load(tmp_path / "pipeline")
    rows = [{**r, "rid": i} for i, r in enumerate(_tricky_rows(pq.read_table(recsys_raw / "test")))]
    assert_identical(
        wnd.transform_batch(rows, keep=["rid"]), loaded.transform_batch(rows, keep=["rid"])
    )
    df = spark.createDataFrame(pa.Table.from_pylist(rows))
    assert_identical(
        wnd.transform(df, keep=["rid"]).toArrow(), loaded.transform(df, keep=["rid"]).toArrow()
    )
    assert loaded.feature_spec() == wnd.feature_spec()


# ------------------------------------------------- every other operation, random rows


def _random_rows(n: int, seed: int, spread: float = 5.0) -> list[dict]:
    rng = random.Random(seed)
    words = ["a", "b", "é", "日本", "", "x" * 40, "tab"]
    rows = []
    for i in range(n):
        rows.append(
            {
                "rid": i,
                "s": rng.choice([*words, None, f"rare{rng.randrange(10**6)}"]),
                "n": rng.choice([None, 0, -3, 7, 10**12, rng.randrange(-1000, 1000)]),
                "x": rng.choice(
                    [None, -1.5, 0.0, math.pi, 1e-300, 1e300, rng.uniform(-spread, spread)]
                ),
                "flag": rng.choice([True, False, None]),
                "tags": rng.choice([None, "", "a|b", "b|c|d|a", "é|", "z"]),
                "y": float(rng.random() < 0.3),
            }
        )
    return rows


KITCHEN_SINK = {
    "name": "all_ops",
    "steps": {
        "x_int": {"op": "cast", "columns": ["x"], "to": "int64", "out": ["x_int"]},
        "n_filled": {"op": "fill", "columns": ["n"], "value": 0, "out": ["n_filled"]},
        "label": {"op": "label", "columns": ["y"], "out": "label"},
        "tags_len": {"op": "list_length", "columns": ["tags"], "sep": "|"},
        "tags_first": {
            "op": "truncate_list",
            "columns": ["tags"],
            "sep": "|",
            "keep": 2,
            "join": "+",
            "out": ["tags_first"],
        },
        "s_map": {"op": "map", "columns": ["s"], "values": ["a", "é"], "out": ["s_map"]},
        "s_hash": {"op": "hash", "columns": ["s"], "buckets": 97, "out": ["s_hash"]},
        "n_hash": {
            "op": "hash",
            "columns": ["n", "flag"],
            "buckets": 13,
            "out": ["n_hash", "flag_hash"],
        },
        "cross": {"op": "cross", "columns": ["s", "n", "flag"], "buckets": 1000},
        "s_count": {"op": "count", "columns": ["s"]},
        "s_te": {"op": "target", "columns": ["s", "flag"], "target": "y", "smoothing": 3.0},
        "x_scaled": {"op": "minmax", "columns": ["x_int", "n_filled"], "clip": False},
        "x_log": {"op": "log", "columns": ["x", "n"], "out": ["x_log", "n_log"]},
        "n_bins": {"op": "bins", "columns": ["n"], "edges": [-5, 0, 1000], "out": ["n_bins"]},
        "tags": {"op": "category", "columns": ["tags"], "split": "|", "max_len": 3},
        "s": {"op": "category", "columns": ["s", "tags_first"], "shared": True, "min_freq": 2},
    },
}
OUTPUT_NAMES = [
    "label", "s", "tags_first", "tags", "tags_len", "s_map", "s_hash", "n_hash", "flag_hash",
    "s_n_flag", "s_count", "s_te", "flag_te", "x_int", "n_filled", "x_log", "n_log", "n_bins",
]  # fmt: skip
RAW_TYPES = {"s": "string", "n": "int64", "x": "float64", "flag": "bool", "tags": "string",
             "y": "float64"}  # fmt: skip


def test_every_operation_offline_equals_online(spark) -> None:
    cfg = {**KITCHEN_SINK, "outputs": {n: {"entity": "context"} for n in OUTPUT_NAMES},
           "label": "label"}  # fmt: skip
    cfg["outputs"]["label"] = {}
    pipeline = FeaturePipeline.from_config(cfg, RAW_TYPES)
    schema = pa.schema([("rid", pa.int64()), ("s", pa.string()), ("n", pa.int64()),
                        ("x", pa.float64()), ("flag", pa.bool_()), ("tags", pa.string()),
                        ("y", pa.float64())])  # fmt: skip
    train = pa.Table.from_pylist(_random_rows(3000, seed=1), schema=schema)
    pipeline.fit(spark.createDataFrame(train))
    test_rows = _random_rows(500, seed=2, spread=50.0)  # wider than train: scaled beyond [0, 1]
    test = pa.Table.from_pylist(test_rows, schema=schema)
    offline = pipeline.transform(spark.createDataFrame(test), keep=["rid"]).toArrow()
    online = pipeline.transform_batch(test_rows, keep=["rid"])
    assert_identical(offline, online)
    assert_identical(offline, pipeline.transform_batch(test, keep=["rid"]))
    # the random rows cover the edges: missing hashes, unknown values, values off the range
    assert {0, 1} <= set(online["s"].to_pylist())
    assert 0 in online["s_hash"].to_pylist()
    assert min(online["x_int"].to_pylist()) < 0.0 or max(online["x_int"].to_pylist()) > 1.0
