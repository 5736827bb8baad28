"""`split.method=per_user_time` on Spark: each user's latest rows go to test, the latest of the
rest to valid (recsys/features/split.py), exactly, deterministically and through
`recsys.preprocess`; and the splits refused instead of carved empty."""

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import DictConfig

from recsys.features.columns import FeatureError
from recsys.features.split import user_split_sizes
from recsys.preprocess import preprocess
from tests.conftest import compose_preprocess

pytestmark = pytest.mark.integration

# (rid, user, t): a hand-made log; rows listed out of time order on purpose
ROWS = [
    # u1, 5 rows: with valid 0.25 / test 0.2 -> test 1 (t 50), valid 1 (t 40), train 3
    (0, "u1", 50), (1, "u1", 10), (2, "u1", 40), (3, "u1", 20), (4, "u1", 30),
    # u2, 3 rows, the two latest tied at t 7: one of rids 6, 7 goes to test (the seeded hash)
    (5, "u2", 5), (6, "u2", 7), (7, "u2", 7),
    # u3, 2 rows: too few to give any, both stay in train
    (8, "u3", 1), (9, "u3", 2),
    # u4, 10 rows at t 100..109: test 2 (108, 109), valid ceil(8 * 0.25) = 2 (106, 107)
    *[(10 + i, "u4", 100 + i) for i in range(10)],
    # u5, 3 timed rows and one without a time: the untimed row stays in train, uncounted
    (20, "u5", 3), (21, "u5", None), (22, "u5", 1), (23, "u5", 2),
    # no user: nothing to hold out for, train
    (24, None, 1), (25, None, 2), (26, None, 3),
]  # fmt: skip
TIED = {6, 7}


def _frame(spark, rows: list[tuple]):
    rid, user, t = zip(*rows, strict=True)
    table = pa.table({"rid": pa.array(rid, pa.int64()), "user": pa.array(user, pa.string()),
                      "t": pa.array(t, pa.int64())})  # fmt: skip
    return spark.createDataFrame(table)


def _split(df, seed: int = 0, valid: float = 0.25, test: float = 0.2) -> list[set[int]]:
    from recsys.features.split import split_frame

    parts = split_frame(df, "per_user_time", valid, test, seed, time_column="t",
                        user_column="user")  # fmt: skip
    return [{r.rid for r in part.select("rid").collect()} for part in parts]


def test_each_users_latest_rows_go_to_test_then_valid_exactly(spark) -> None:
    train, valid, test = _split(_frame(spark, ROWS))
    assert valid == {2, 16, 17}
    assert test - TIED == {0, 18, 19, 20} and len(test & TIED) == 1
    assert train == set(range(27)) - valid - test
    assert train >= {1, 3, 4, 5, 8, 9, 21, 22, 23, 24, 25, 26}


def test_the_split_is_seeded_and_the_same_across_runs_and_partitionings(spark) -> None:
    df = _frame(spark, ROWS)
    first = _split(df, seed=0)
    assert _split(df, seed=0) == first
    assert _split(df.repartition(5, "rid"), seed=0) == first  # not the input's layout
    # the tie goes either way depending on the seed alone
    tied_in_test = {min(_split(df, seed=s)[2] & TIED) for s in range(8)}
    assert tied_in_test == TIED


def test_every_user_follows_the_rule_and_no_test_row_predates_train(spark) -> None:
    # users with 1..25 rows, times with many ties (t = row % 3)
    users = [f"n{n}" for n in range(1, 26) for _ in range(n)]
    rows = [(rid, user, rid % 3) for rid, user in enumerate(users)]
    by_rid = {rid: (user, t) for rid, user, t in rows}
    parts = _split(_frame(spark, rows), seed=3, valid=0.15, test=0.2)
    assert sorted(rid for part in parts for rid in part) == list(range(len(rows)))
    for n in range(1, 26):
        user = f"n{n}"
        times = [sorted(by_rid[r][1] for r in part if by_rid[r][0] == user) for part in parts]
        assert tuple(map(len, times)) == user_split_sizes(n, 0.15, 0.2), user
        train, valid, test = times
        # a later part never holds an earlier time (ties may straddle a cut)
        assert max(train) <= min(valid + test, default=max(train)), user
        assert max(valid, default=0) <= min(test, default=max(valid, default=0)), user


# -------------------------------------------------------------- through recsys.preprocess

# without negative sampling: it adds training rows, and its plans take ~30 s to build here
RATINGS = ["dataset=table", "features=ratings", "~features.steps.negatives",
           "split.method=per_user_time"]  # fmt: skip
USERS = {"u1": 2, "u2": 3, "u3": 4, "u4": 5, "u5": 10, "u6": 12}
"""Rows per user; with the default fractions (0.1, 0.1): valid 0+0+1+1+1+1, test 0+1+1+1+1+2."""


def _ratings_csv(path: Path, users: dict[str, int], start: int = 0) -> None:
    """Ratings of items m0..m5 (all of them rated by u6 and u5 early, so that every item is
    known to train's vocabulary), alternately positive and negative."""
    lines = ["user_id,item_id,rating,timestamp,genres"]
    for user, n in users.items():
        for i in range(n):
            lines.append(f"{user},m{i % 6},{4 + i % 2 if i % 3 else 2},{start + 10 * i},Drama")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _ratings_config(tmp_path: Path, *overrides: str) -> tuple[DictConfig, Path]:
    """The ratings preprocess of the six users' CSV (with `overrides`), and its `out`."""
    data = tmp_path / "ratings.csv"
    _ratings_csv(data, USERS)
    out = tmp_path / "out"
    return compose_preprocess(
        [*RATINGS, f"data={data}", f"out={out}", *overrides], tmp_path / "run"
    ), out


def _users_per_split(out: Path, split: str) -> dict[str, int]:
    raw = pq.read_table(out / "user_features", columns=["user_id", "user_id_raw"]).to_pylist()
    names = {r["user_id"]: r["user_id_raw"] for r in raw}
    counts: dict[str, int] = {}
    for encoded in pq.read_table(out / split, columns=["user_id"])["user_id"].to_pylist():
        counts[names[encoded]] = counts.get(names[encoded], 0) + 1
    return counts


def test_preprocess_carves_valid_and_test_per_user_and_says_so(
    spark, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg, out = _ratings_config(tmp_path)
    with caplog.at_level(logging.INFO, logger="recsys.preprocess"):
        summary = preprocess(cfg, spark=spark)
    assert summary.rows == {"train": 26, "valid": 4, "test": 6}
    assert not (out / "ranked").exists()  # the ranked rows are the run's own
    assert _users_per_split(out, "test") == {"u2": 1, "u3": 1, "u4": 1, "u5": 1, "u6": 2}
    assert _users_per_split(out, "valid") == {"u3": 1, "u4": 1, "u5": 1, "u6": 1}
    assert (
        f"no valid/ or test/ part in {cfg.data}: carving split.valid_fraction=0.1, "
        "split.test_fraction=0.1 from train (split.method=per_user_time)"
    ) in caplog.messages
    assert "  test: 6 rows (carved from train)" in caplog.messages


def test_an_input_with_its_own_test_part_gets_valid_per_user_only(spark, tmp_path: Path) -> None:
    data = tmp_path / "raw"
    _ratings_csv(data / "train" / "part-0.csv", USERS)
    _ratings_csv(data / "test" / "part-0.csv", {"u1": 1, "u6": 2}, start=1000)
    out = tmp_path / "out"
    cfg = compose_preprocess([*RATINGS, f"data={data}", f"out={out}", "split.test_fraction=0"],
                             tmp_path / "run")  # fmt: skip
    summary = preprocess(cfg, spark=spark)
    # valid = held_out(n, 0.1) of all of each user's train rows: 0, 1, 1, 1, 1, 2
    assert summary.rows["valid"] == 6
    assert _users_per_split(out, "valid") == {"u2": 1, "u3": 1, "u4": 1, "u5": 1, "u6": 2}
    assert summary.rows["test"] == 3  # the given test part, untouched
    assert summary.rows["train"] == sum(USERS.values()) - 6
    assert _users_per_split(out, "test") == {"u1": 1, "u6": 2}


def test_no_test_part_and_no_test_fraction_is_refused_before_spark_work(
    spark, tmp_path: Path
) -> None:
    cfg, out = _ratings_config(tmp_path, "split.test_fraction=0")
    with pytest.raises(FeatureError, match=r"has no test/ part and split\.test_fraction=0"):
        preprocess(cfg, spark=spark)
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_a_carved_test_part_that_comes_out_empty_is_refused(spark, tmp_path: Path) -> None:
    data = tmp_path / "ratings.csv"
    _ratings_csv(data, {"u1": 2, "u2": 2, "u3": 1})  # nobody has the 3 rows it takes
    out = tmp_path / "out"
    cfg = compose_preprocess([*RATINGS, f"data={data}", f"out={out}"], tmp_path / "run")
    with pytest.raises(FeatureError, match=(
        r"^split\.method=per_user_time carved no test rows from .*ratings\.csv with "
        r"split\.test_fraction=0\.1: no user has 3 or more rows with a time")):  # fmt: skip
        preprocess(cfg, spark=spark)
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_a_test_split_declared_absent_is_neither_carved_nor_written(
    spark, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg, out = _ratings_config(tmp_path, "split.absent=[test]")
    with caplog.at_level(logging.INFO, logger="recsys.preprocess"):
        summary = preprocess(cfg, spark=spark)
    # valid = held_out(n, 0.1) of each user's rows, none taken by test: 0, 1, 1, 1, 1, 2
    assert summary.rows == {"train": 30, "valid": 6, "test": 0}
    assert summary.sources == {"train": "input", "valid": "carved", "test": "absent"}
    assert not (out / "test").exists() and (out / "valid").is_dir()
    assert "  test: 0 rows (absent: split.absent)" in caplog.messages
    assert "carving split.valid_fraction=0.1 from train" in " ".join(caplog.messages)
