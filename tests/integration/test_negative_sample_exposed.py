"""`negative_sample` with `keep_negatives`: logged exposures keep their labels, and sampled
negatives are never an item the user was shown (recsys/features/sampling.py)."""

import pyarrow as pa
import pytest

from recsys.features.ops import build_op

pytestmark = pytest.mark.integration


def test_exposed_negatives_stay_and_are_never_sampled(spark) -> None:
    # u1 was shown i1 (engaged) and i2 (not), u2 i1 (engaged) and i3 (not); i4 is engaged
    # by u3 only, so it is the one item neither u1 nor u2 was shown
    data = {
        "user": ["u1", "u1", "u2", "u2", "u3"],
        "item": ["i1", "i2", "i1", "i3", "i4"],
        "genre": ["g1", "g2", "g1", "g3", "g4"],
        "label": [1.0, 0.0, 1.0, 0.0, 1.0],
    }
    config = {"op": "negative_sample", "user": "user", "item": "item", "k": 1,
              "mode": "uniform", "item_columns": ["genre"], "seed": 3,
              "keep_negatives": True}  # fmt: skip
    op = build_op("neg", config)
    train = spark.createDataFrame(pa.table(data))
    op.fit(train)
    rows = op.transform_train(train).toArrow().to_pylist()
    # every input row with its own label, plus one sampled negative per positive
    shown = set(zip(data["user"], data["item"], strict=True))
    logged = [(r["user"], r["item"], r["label"]) for r in rows if (r["user"], r["item"]) in shown]
    assert sorted(logged) == sorted(zip(data["user"], data["item"], data["label"], strict=True))
    sampled = [r for r in rows if (r["user"], r["item"]) not in shown]
    assert len(rows) == 8 and len(sampled) == 3 and all(r["label"] == 0.0 for r in sampled)
    for r in sampled:
        assert r["genre"] == {"i1": "g1", "i4": "g4"}[r["item"]]
    # u1 and u2 can only get i4 (i2 and i3 were never engaged, so never drawn)
    assert sorted((r["user"], r["item"]) for r in sampled if r["user"] != "u3") == [
        ("u1", "i4"),
        ("u2", "i4"),
    ]
