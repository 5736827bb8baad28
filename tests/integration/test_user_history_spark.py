"""The user_history op fitted on Spark: train positives only, latest first by time or by row
order, one entry per item, and the same histories from Spark and Arrow transforms."""

import pyarrow as pa
import pytest

from recsys.features.ops import build_op

pytestmark = pytest.mark.integration


def _train() -> pa.Table:
    # user 2 liked items 5 (t=30), 6 (t=10, then again at t=40) and 7 (t=20), skipped 8;
    # user 3 liked 9; index 1 (unknown) and 0 (missing) never enter a history
    return pa.table(
        {
            "rid": [0, 1, 2, 3, 4, 5, 6, 7],
            "u": [2, 2, 2, 2, 2, 3, 3, 1],
            "i": [5, 6, 7, 8, 6, 9, 1, 5],
            "label": [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0],
            "t": [30, 10, 20, 50, 40, 5, 6, 7],
        }
    )


def test_histories_are_train_positives_latest_first_in_spark_and_arrow(spark) -> None:
    config = {"op": "user_history", "user": "u", "item": "i", "time": "t", "max_len": 2}
    op = build_op("hist", config)
    train = spark.createDataFrame(_train())
    op.fit(train)
    # item 6's latest engagement (t=40) puts it first; 7 (t=20) falls beyond max_len
    assert op.state() == {"size": 10, "users": [2, 3], "lengths": [2, 1], "items": [6, 5, 9]}
    test = pa.table({"rid": [0, 1, 2], "u": [3, 2, 4], "i": [9, 8, 5]})
    rows = op.transform(spark.createDataFrame(test)).orderBy("rid").toArrow()
    assert rows["user_history"].to_pylist() == [[9, 0], [6, 5], [0, 0]]
    assert rows.column_names == ["rid", "u", "i", "user_history"]
    assert op.transform_arrow(test)["user_history"].to_pylist() == [[9, 0], [6, 5], [0, 0]]

    # without a label every row counts, and without a time the latest rows come first:
    # item 6 once (at row 4), or once per row without `distinct`
    first = spark.createDataFrame(_train().slice(0, 5))
    by_row = build_op("hist", {**config, "time": None, "label": None, "max_len": 4})
    by_row.fit(first)
    assert by_row.state()["items"] == [6, 8, 7, 5]
    repeated = build_op("hist", {**config, "time": None, "label": None, "max_len": 4,
                                 "distinct": False})  # fmt: skip
    repeated.fit(first)
    assert repeated.state()["items"] == [6, 8, 7, 6]
