"""Every operation on small Spark DataFrames, with outputs computed by hand.

Each stateful operation is fitted on a train frame and applied to a test frame, so the test
also shows that transform uses train's state (values unseen in train map to 1).
"""

import math

import numpy as np
import pyarrow as pa
import pytest

from recsys.features.columns import ColumnTypeError
from recsys.features.ops import build_op
from recsys.features.split import split_frame

pytestmark = pytest.mark.integration


def _frame(spark, data: dict):
    return spark.createDataFrame(pa.table(data))


def _fit(spark, config: dict, train: dict):
    op = build_op("step", config)
    op.fit(_frame(spark, train))
    return op


def _column(df, name: str, order: str = "rid") -> list:
    table = df.toArrow()
    order_idx = np.argsort(table[order].to_numpy(zero_copy_only=False), kind="stable")
    return table[name].take(pa.array(order_idx)).to_pylist()


def test_category_encoding_by_descending_frequency_unknown_missing(spark) -> None:
    # counts in train: c 3, b 2, a 1, x 1 -> c 2, b 3, then the tie a/x by value: a 4, x 5
    train = {"v": ["a", "b", "b", "c", "c", "c", None, "", "x"]}
    op = _fit(spark, {"op": "category", "columns": ["v"]}, train)
    assert op.vocabs["v"].values.to_pylist() == ["c", "b", "a", "x"]
    test = _frame(spark, {"rid": [0, 1, 2, 3, 4], "v": ["a", "d", None, "c", ""]})
    assert _column(op.transform(test), "v") == [4, 1, 0, 2, 0]
    # min_freq 2: a and x become unknown
    op = _fit(spark, {"op": "category", "columns": ["v"], "min_freq": 2}, train)
    assert _column(op.transform(test), "v") == [1, 1, 0, 2, 0]
    assert op.describe("v").size == 4


def test_one_vocabulary_shared_by_two_columns(spark) -> None:
    # a counted over both columns: b 3, a 2, c 1
    train = {"u1": ["a", "b", "b"], "u2": ["b", "c", "a"]}
    op = _fit(spark, {"op": "category", "columns": ["u1", "u2"], "shared": True}, train)
    assert list(op.artifacts()) == ["shared"]
    test = _frame(spark, {"rid": [0, 1], "u1": ["c", "zz"], "u2": ["a", "b"]})
    out = op.transform(test)
    assert _column(out, "u1") == [4, 1]
    assert _column(out, "u2") == [3, 2]


def test_multi_valued_lists_encoded_truncated_and_padded(spark) -> None:
    # t2 3, t1 2, t3 1
    train = {"tags": ["t1\tt2", "t2", None, "t2\tt3\tt1"]}
    op = _fit(spark, {"op": "category", "columns": ["tags"], "split": "\t", "max_len": 2}, train)
    test = _frame(spark, {"rid": [0, 1, 2, 3], "tags": ["t3\tt9\tt1", "", None, "t2"]})
    assert _column(op.transform(test), "tags") == [[4, 1], [0, 0], [0, 0], [2, 0]]
    assert op.describe("tags").kind == "multi_categorical"


def test_count_encoding_uses_train_counts(spark) -> None:
    op = _fit(spark, {"op": "count", "columns": ["c"]}, {"c": ["a", "a", "b", None]})
    test = _frame(spark, {"rid": [0, 1, 2, 3], "c": ["a", "b", "z", None]})
    assert _column(op.transform(test), "c_count") == [2.0, 1.0, 0.0, 0.0]


def test_target_encoding_is_out_of_fold_on_train_and_smoothed_elsewhere(spark) -> None:
    n = 40
    y = [float(i % 3 == 0) for i in range(n)]  # 14 ones
    train = _frame(spark, {"rid": list(range(n)), "uniq": [f"r{i}" for i in range(n)],
                           "k": ["k"] * n, "y": y})  # fmt: skip
    config = {"op": "target", "columns": ["uniq", "k"], "target": "y", "folds": 4,
              "smoothing": 2.0}  # fmt: skip
    op = build_op("te", config)
    op.fit(train)
    prior = 14 / 40
    assert op.prior == pytest.approx(prior)
    out = op.transform_train(train).toArrow().sort_by("rid")
    # a value seen once has no out-of-fold rows: its training rows get exactly the prior
    # (any leak of the row's own label would move it)
    assert out["uniq_te"].to_pylist() == pytest.approx([prior] * n)
    # the shared value: (sum - fold sum + prior * m) / (n - fold size + m), from the folds
    from pyspark.sql import functions as F

    fold = F.pmod(F.xxhash64(F.lit(0), *[F.col(c) for c in train.columns]), F.lit(4))
    folds = train.withColumn("f", fold).toArrow().sort_by("rid")["f"].to_numpy()
    y_arr = np.array(y)
    expected = [
        (y_arr.sum() - y_arr[folds == f].sum() + prior * 2) / (n - (folds == f).sum() + 2)
        for f in folds
    ]
    assert out["k_te"].to_pylist() == pytest.approx(expected)
    assert len(set(folds.tolist())) == 4
    # other rows: (sum + prior * m) / (count + m); unknown and missing: the prior
    test = _frame(spark, {"rid": [0, 1, 2], "uniq": ["r0", "new", None], "k": ["k", "x", None],
                          "y": [0.0, 0.0, 0.0]})  # fmt: skip
    got = op.transform(test).toArrow().sort_by("rid")
    assert got["uniq_te"].to_pylist() == pytest.approx([(1 + prior * 2) / 3, prior, prior])
    assert got["k_te"].to_pylist() == pytest.approx([(14 + prior * 2) / 42, prior, prior])


def test_minmax_uses_train_range_and_clips(spark) -> None:
    op = _fit(spark, {"op": "minmax", "columns": ["x"]}, {"x": [2, 4, 6, None]})
    assert op.stats == {"x": {"min": 2.0, "max": 6.0}}
    test = _frame(spark, {"rid": [0, 1, 2, 3], "x": pa.array([4, 10, None, 0], pa.int64())})
    assert _column(op.transform(test), "x") == [0.5, 1.0, 0.0, 0.0]


def test_stateless_operations_match_hand_computed_values(spark) -> None:
    df = _frame(
        spark,
        {
            "rid": [0, 1, 2, 3, 4],
            "media": ["Photo", "Video", None, "", "GIF"],
            "lists": ["Photo\tVideo\tGIF", "a", None, "", "x\t"],
            "n": pa.array([None, 0, 1, 99, 100], pa.int64()),
            "x": [1.9, -1.9, None, 3.0, float("nan")],
            "flag": [True, False, None, True, False],
            "ts": [None, 0.0, 1612396800.5, None, 5.0],
        },
    )

    def run(config: dict, column: str) -> list:
        op = build_op("s", config)
        op.fit(df)
        return _column(op.transform(df), column)

    assert run({"op": "map", "columns": ["media"], "values": ["GIF", "Photo"]}, "media") == [
        3, 1, 0, 0, 2,
    ]  # fmt: skip
    assert run({"op": "truncate_list", "columns": ["lists"], "keep": 2}, "lists") == [
        "Photo_Video", "a", None, "", "x_",
    ]  # fmt: skip
    assert run({"op": "list_length", "columns": ["lists"]}, "lists_len") == [3, 1, 0, 0, 2]
    assert run({"op": "bins", "columns": ["n"], "edges": [1, 100]}, "n") == [0, 1, 2, 2, 3]
    assert run({"op": "fill", "columns": ["n"], "value": -1}, "n") == [-1, 0, 1, 99, 100]
    assert run({"op": "cast", "columns": ["x"], "to": "int64"}, "x") == [1, -1, None, 3, None]
    assert run({"op": "cast", "columns": ["flag"], "to": "int64"}, "flag") == [1, 0, None, 1, 0]
    assert run({"op": "label", "columns": ["ts"]}, "label") == [0.0, 0.0, 1.0, 0.0, 1.0]
    logs = run({"op": "log", "columns": ["n"]}, "n")
    assert logs == pytest.approx([0.0, 0.0, math.log(2), math.log(100), math.log(101)])


def test_a_wrong_input_type_names_the_step_and_column(spark) -> None:
    op = build_op("scale", {"op": "minmax", "columns": ["name"]})
    with pytest.raises(ColumnTypeError, match=r"step 'scale' \(minmax\): column 'name' is string"):
        op.fit(_frame(spark, {"name": ["a", "b"]}))


def _interactions() -> dict:
    # u1 likes i1, i2; u2 likes i1; u3 likes i3; u2 disliked i4 (label 0, not a positive)
    return {
        "user": ["u1", "u1", "u2", "u3", "u2"],
        "item": ["i1", "i2", "i1", "i3", "i4"],
        "genre": ["g1", "g2", "g1", "g3", "g4"],
        "ctx": [10, 11, 12, 13, 14],
        "label": [1.0, 1.0, 1.0, 1.0, 0.0],
    }


def test_negative_sampling_k_per_positive_never_a_known_positive(spark) -> None:
    config = {"op": "negative_sample", "user": "user", "item": "item", "k": 1,
              "mode": "uniform", "item_columns": ["genre"], "seed": 7}  # fmt: skip
    op = build_op("neg", config)
    train = _frame(spark, _interactions())
    op.fit(train)
    rows = op.transform_train(train).toArrow().to_pylist()
    positives = [r for r in rows if r["label"] == 1.0]
    negatives = [r for r in rows if r["label"] == 0.0]
    assert len(positives) == 4 and len(negatives) == 4  # the label-0 row is not a positive
    liked = {("u1", "i1"), ("u1", "i2"), ("u2", "i1"), ("u3", "i3")}
    genre = {"i1": "g1", "i2": "g2", "i3": "g3"}
    for r in negatives:
        assert (r["user"], r["item"]) not in liked
        assert r["genre"] == genre[r["item"]]  # the sampled item's own columns
    # the user and context columns come from the positive they were drawn for
    assert sorted((r["user"], r["ctx"]) for r in negatives) == [
        ("u1", 10), ("u1", 11), ("u2", 12), ("u3", 13),
    ]  # fmt: skip
    # u1 has liked i1 and i2, so its only possible negative is i3
    assert {r["item"] for r in negatives if r["user"] == "u1"} == {"i3"}
    again = op.transform_train(train).toArrow().to_pylist()
    assert sorted(map(str, again)) == sorted(map(str, rows))  # seeded
    # valid / test rows are left as they are
    assert op.transform(train).count() == 5


def test_popularity_sampling_prefers_popular_items(spark) -> None:
    # i0 is liked by users 0..149 (popularity 150 of 200), i1..i50 by one user each: users
    # 150..199 should draw i0 about 3 times in 4, against 1 in 51 if drawn uniformly
    users = [f"u{i}" for i in range(200)]
    items = ["i0"] * 150 + [f"i{i}" for i in range(1, 51)]
    config = {"op": "negative_sample", "user": "user", "item": "item", "k": 1,
              "mode": "popularity", "seed": 1}  # fmt: skip
    op = build_op("neg", config)
    train = _frame(spark, {"user": users, "item": items})
    op.fit(train)
    rows = op.transform_train(train).toArrow().to_pylist()
    negatives = [r for r in rows if r["label"] == 0.0]
    assert len(negatives) == 200
    fresh = [r for r in negatives if int(r["user"][1:]) >= 150]
    share = sum(r["item"] == "i0" for r in fresh) / len(fresh)
    assert 0.5 < share < 0.95
    assert not any(r["item"] == "i0" for r in negatives if int(r["user"][1:]) < 150)


def test_random_split_is_seeded_disjoint_and_complete(spark) -> None:
    df = spark.range(2000).withColumnRenamed("id", "rid")
    parts = split_frame(df, "random", 0.2, 0.1, seed=5)
    ids = [sorted(r.rid for r in p.collect()) for p in parts]
    assert sorted(i for part in ids for i in part) == list(range(2000))
    assert [len(i) for i in ids] == pytest.approx([1400, 400, 200], abs=60)
    again = [sorted(r.rid for r in p.collect()) for p in split_frame(df, "random", 0.2, 0.1, 5)]
    assert again == ids
    other = sorted(r.rid for r in split_frame(df, "random", 0.2, 0.1, seed=6)[2].collect())
    assert other != ids[2]


def test_time_split_puts_the_latest_rows_last(spark) -> None:
    df = spark.range(1000).selectExpr("id as rid", "(id * 7) % 1000 as t")
    train, valid, test = (p.toArrow()["t"].to_numpy() for p in split_frame(
        df, "time", 0.2, 0.1, seed=0, time_column="t"))  # fmt: skip
    assert len(train) + len(valid) + len(test) == 1000
    assert train.max() < valid.min() and valid.max() < test.min()
    assert [len(train), len(valid), len(test)] == pytest.approx([700, 200, 100], abs=5)


def test_pipeline_fit_stops_after_the_last_step_that_learns(spark, monkeypatch) -> None:
    from recsys.features.ops import Op
    from recsys.features.pipeline import FeaturePipeline

    steps = {
        "fill": {"op": "fill", "columns": ["v"], "value": "z"},
        "codes": {"op": "category", "columns": ["v"], "out": ["code"]},
        "hashed": {"op": "hash", "columns": ["v"], "buckets": 10, "out": ["h"]},
    }
    config = {"name": "t", "steps": steps, "outputs": {"code": {}, "h": {}}}
    pipeline = FeaturePipeline.from_config(config, {"v": "string"})
    transformed: list[str] = []
    original = Op.transform_train

    def spy(self, df):
        transformed.append(self.name)
        return original(self, df)

    monkeypatch.setattr(Op, "transform_train", spy)
    train = _frame(spark, {"v": ["a", "b", "b", None]})
    pipeline.fit(train)
    # the category step learned from the filled rows; nothing after it needed them
    assert pipeline.fitted
    assert pipeline.steps[1].vocabs["v"].values.to_pylist() == ["b", "a", "z"]
    assert transformed == []
    out = pipeline.transform(_frame(spark, {"v": ["b", None, "q"]})).toArrow()
    assert out["code"].to_pylist() == [2, 4, 1]
    assert transformed == []  # transform (not transform_train) on non-training rows
