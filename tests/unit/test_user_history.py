"""The user_history feature op without Spark: histories padded and looked up by user, the
saved state, the FeatureSpec entry and the config checks (the Spark fit is checked in
tests/integration/test_user_history_spark.py)."""

import json

import numpy as np
import pyarrow as pa
import pytest

from recsys.features.columns import FeatureError
from recsys.features.history import HISTORY_STAT, UserHistory
from recsys.features.ops import build_op, op_config

BASE = {"op": "user_history", "user": "u", "item": "i", "out": "hist"}


def _fitted(max_len: int = 2) -> UserHistory:
    op = build_op("hist", {**BASE, "max_len": max_len})
    assert isinstance(op, UserHistory)
    # user 5: items 7 (latest), 3, 9; user 2: item 4; rows arrive in no particular order
    table = pa.table(
        {"u": [5, 2, 5, 5], "i": [3, 4, 9, 7], "__rank": [2, 1, 3, 1]},
    )
    op._set(table, size=12)
    op.fitted = True
    return op


def test_each_user_gets_its_latest_items_padded_and_others_none() -> None:
    op = _fitted(max_len=2)
    out = op.transform_arrow(pa.table({"u": pa.array([5, 2, 8, None, 5], pa.int64())}))
    assert out["hist"].to_pylist() == [[7, 3], [4, 0], [0, 0], [0, 0], [7, 3]]
    assert out["hist"].type == pa.list_(pa.int64())
    wide = _fitted(max_len=4)
    assert wide.transform_arrow(pa.table({"u": [5]}))["hist"].to_pylist() == [[7, 3, 9, 0]]


def test_the_state_is_plain_data_and_loads_back() -> None:
    op = _fitted(max_len=3)
    state = json.loads(json.dumps(op.state()))
    assert state == {"size": 12, "users": [2, 5], "lengths": [1, 3], "items": [4, 7, 3, 9]}
    again = build_op("hist", op_config(op))
    again.load_state(state, {})
    users = pa.table({"u": [2, 5, 6]})
    assert again.transform_arrow(users).equals(op.transform_arrow(users))
    with pytest.raises(FeatureError, match="disagree"):
        build_op("hist", op_config(op)).load_state({**state, "lengths": [1, 2]}, {})
    with pytest.raises(FeatureError, match="bad saved state"):
        build_op("hist", op_config(op)).load_state({"size": 3}, {})


def test_the_spec_entry_is_a_list_of_the_item_columns_indices() -> None:
    op = _fitted(max_len=3)
    info = op.describe("hist")
    assert (info.kind, info.size, info.max_len) == ("multi_categorical", 12, 3)
    assert info.stats[HISTORY_STAT] == "i"
    assert info.stats["users"] == 2 and info.stats["mean_length"] == 2.0
    assert op.lineage() == {"hist": ["u", "i"]}
    assert op.inputs() == ["u", "i", "label"]
    timed = build_op("h", {**BASE, "time": "t"})
    assert timed.inputs() == ["u", "i", "label", "t"]


def test_an_unfitted_step_or_a_missing_user_column_is_refused() -> None:
    op = build_op("hist", {**BASE})
    with pytest.raises(FeatureError, match="not fitted"):
        op.transform_arrow(pa.table({"u": [1]}))
    with pytest.raises(FeatureError, match="'u'"):
        _fitted().transform_arrow(pa.table({"user": [1]}))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"max_len": 0}, "max_len must be >= 1"),
        ({"item": "u"}, "different columns"),
        ({"out": "i"}, "new column"),
        ({"out": ""}, "new column"),
        ({"window": 3}, "unknown key window"),
    ],
)
def test_bad_settings_name_the_step(config: dict, message: str) -> None:
    with pytest.raises(FeatureError, match=f"step 'hist' \\(user_history\\).*{message}"):
        build_op("hist", {**BASE, **config})


def test_no_training_positives_gives_empty_histories() -> None:
    op = build_op("hist", {**BASE, "max_len": 2})
    op._set(pa.table({"u": np.zeros(0, np.int64), "i": np.zeros(0, np.int64), "__rank": []}), 2)
    op.fitted = True
    assert op.transform_arrow(pa.table({"u": [3, 4]}))["hist"].to_pylist() == [[0, 0], [0, 0]]
    assert op.describe("hist").size == 2
