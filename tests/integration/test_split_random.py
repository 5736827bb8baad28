"""`split.method=random` on Spark: copies of a repeated row spread over the splits, seeded and
the same under any partitioning (recsys/features/split.py)."""

import pyarrow as pa
import pytest

from recsys.features.split import (
    CONTENT_COLUMN,
    PART_COLUMN,
    split_frame,
    tag_random,
    with_content_hash,
)

pytestmark = pytest.mark.integration

COPIES = 1000  # of one row; a rule hashing the content alone puts all of them in one split


def _frame(spark):
    distinct = [f"r{i}" for i in range(300)]
    values = ["same"] * COPIES + distinct + ["twice"] * 2
    return spark.createDataFrame(pa.table({"v": values, "n": [len(v) for v in values]}))


def _members(df, seed: int = 3) -> list[list[tuple]]:
    """Each part's (v, n) rows, sorted: one Spark job (the window shuffles every row)."""
    tagged = tag_random(df, 0.2, 0.1, seed).collect()
    return [sorted((r.v, r.n) for r in tagged if r[PART_COLUMN] == part) for part in range(3)]


def test_copies_of_a_repeated_row_spread_over_the_splits_as_the_fractions_say(spark) -> None:
    members = _members(_frame(spark))
    counts = [sum(v == "same" for v, _ in part) for part in members]
    assert sum(counts) == COPIES
    # binomial spread: sd about 14 for train, 13 valid, 9 test
    assert counts == pytest.approx([700, 200, 100], abs=60)
    assert sum(len(m) for m in members) == COPIES + 302


def test_the_copies_split_is_seeded_and_independent_of_partitioning(spark) -> None:
    df = _frame(spark)
    first = _members(df)
    for other in (df.repartition(7), df.orderBy("v", ascending=False)):
        assert _members(other) == first
    assert _members(df, seed=4) != first


def test_a_row_without_copies_lands_where_its_content_hash_says(spark) -> None:
    from pyspark.sql import functions as F

    df = _frame(spark)
    parts = [[r.asDict() for r in p.collect()] for p in split_frame(df, "random", 0.2, 0.1, 3)]
    # the rule before copies were numbered: u = |xxhash64(seed, row) mod 2^53| / 2^53
    h = F.xxhash64(F.lit(3), F.col("v"), F.col("n"))
    u = F.abs(h % F.lit(1 << 53)) / F.lit(float(1 << 53))
    single = df.where("v like 'r%'").withColumn("u", u).collect()
    expected = [
        sorted((r.v, r.n) for r in single if low <= r.u < high)
        for low, high in ((0.0, 0.7), (0.7, 0.9), (0.9, 1.0))
    ]
    found = [sorted((r["v"], r["n"]) for r in part if r["v"].startswith("r")) for part in parts]
    assert found == expected


def test_two_views_of_one_data_set_split_alike_when_hashed_over_all_columns(spark) -> None:
    # the pipeline's two feature sets read different columns of the same rows: hashed over the
    # columns each reads, they split differently; hashed over every declared column, alike
    keys = [i % 200 for i in range(1000)]  # each row 5 times
    table = pa.table({"k": keys, "b": [k % 7 for k in keys], "c": [k % 11 for k in keys]})
    full = with_content_hash(spark.createDataFrame(table), ["k", "b", "c"], 3)

    def parts(view: list[str], hashed: bool) -> list[tuple]:
        df = full.select(*view, *([CONTENT_COLUMN] if hashed else []))
        return sorted((r.k, r[PART_COLUMN]) for r in tag_random(df, 0.2, 0.1, 3).collect())

    assert parts(["k", "b"], hashed=True) == parts(["k", "c"], hashed=True)
    assert parts(["k", "b"], hashed=False) != parts(["k", "c"], hashed=False)
    assert CONTENT_COLUMN not in tag_random(full, 0.2, 0.1, 3).columns
