"""Seeded train / valid / test splits of a Spark DataFrame: random, by time, or per user in time.

- `random`: each row gets `u = |h mod 2**53| / 2**53` in [0, 1) from its content and its copy
  number c (1 for the first of a group of identical rows, 2 for the next, ...): h =
  xxhash64(seed, row) for c = 1 (a row without repeats splits as it always did), xxhash64(seed,
  c, row) after. Rows with u < train share go to train, then valid, then test. The split
  depends on the seed and the data only, never on partitioning or Spark settings, and the
  copies of a repeated row spread over the splits like any other rows: hashing the content
  alone sent every copy to one split, so a row repeated 50 times counted 50 times in one
  split's metrics and never in the others (the generator plants such repeats).
- `time`: rows are ordered by a time column; the train rows are the earliest, the test rows
  the latest, cut at the quantiles of the wanted fractions (rows at a cut time go to the
  later split). Nulls in the time column go to train.
- `per_user_time`: each user's rows are ordered by time (ties by a seeded hash of the row,
  then by its values, so the order never depends on partitioning); the user's latest
  `held_out(n, test_fraction)` rows go to test, then the latest `held_out(m, valid_fraction)`
  of the m rows left go to valid, the rest to train. `held_out` takes `ceil(n * fraction)`
  but always leaves `MIN_KEPT` (2) rows behind: a user needs 3 timed rows to give one to
  test and 4 to give one to valid as well, and every user keeps at least 2 rows in train.
  Rows with a null user or a null time stay in train and are not counted. No user's test
  row is earlier than any of that user's valid or train rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from recsys.features.columns import FeatureError, MissingColumnError, spark_kind

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

METHODS = ("random", "time", "per_user_time")
TIMED_METHODS = ("time", "per_user_time")
TAGGED_METHODS = ("random", "per_user_time")  # a window over the rows: tag, write, read back
NUMERIC = ("int64", "float64")
PART_COLUMN = "__part"
CONTENT_COLUMN = "__content"  # a row's hash over all declared columns (random split)
MIN_KEPT = 2
"""Rows each carve leaves to a user: a user keeps at least this many rows in train, so no
user's whole history (or all but one row of it) is held out."""
EPS = 1e-9
"""`n * fraction` can land a hair above an integer in floating point (100 * 0.07 =
7.000000000000001); without this, ceil would hold out one row more."""


def check_fractions(valid_fraction: float, test_fraction: float) -> None:
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise FeatureError(f"split.{name} must be in [0, 1), got {value}")
    if valid_fraction + test_fraction >= 1.0:
        raise FeatureError("split.valid_fraction + split.test_fraction must be below 1")


HELD_OUT = ("valid", "test")
MAY_BE_ABSENT = ("test",)  # training picks its best epoch on valid: valid is always there


def part_sources(split: Mapping[str, Any], has: Mapping[str, bool], data: str) -> dict[str, str]:
    """Where each split comes from: `input` (the input's own part), `carved` (from train by
    `split.method`) or `absent` (listed in `split.absent`: not read, not carved, no output
    directory). `has` says which of valid / test the input holds. Refused, naming the keys:
    an unknown or not-allowed name in `split.absent`, an absent split the input has, and a
    test that would be carved empty (`split.test_fraction=0` without a test/ part)."""
    absent = list(split.get("absent") or [])
    for name in absent:
        if name not in MAY_BE_ABSENT:
            raise FeatureError(
                f"split.absent lists {name!r}; only {', '.join(MAY_BE_ABSENT)} may be absent "
                "(training picks its best epoch on valid)"
                if name in HELD_OUT or name == "train"
                else f"split.absent lists {name!r}, which is not a split; it may list test"
            )
        if has.get(name):
            raise FeatureError(
                f"split.absent lists {name} but the input data={data} has a {name}/ part: "
                f"remove {name} from split.absent to use it, or point data at train/ alone"
            )
    sources = {"train": "input"}
    for name in HELD_OUT:
        sources[name] = "absent" if name in absent else "input" if has.get(name) else "carved"
    if sources["test"] == "carved" and split.get("test_fraction") == 0:
        # an empty test part passed preprocessing and failed only after training
        raise FeatureError(
            f"the input data={data} has no test/ part and split.test_fraction=0: nothing "
            "would be tested; set split.test_fraction > 0 (carved from train), give the "
            "input a test/ part, or declare it absent on purpose with split.absent=[test]"
        )
    return sources


def held_out(n: int, fraction: float) -> int:
    """How many of a user's `n` latest rows one carve takes: `ceil(n * fraction)`, at most
    `n - MIN_KEPT`, never below 0 (the Python twin of the Spark expression `_held_out`)."""
    return max(0, min(math.ceil(n * fraction - EPS), n - MIN_KEPT))


def user_split_sizes(n: int, valid_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, valid, test) rows of a user with `n` timed rows under `per_user_time`."""
    test = held_out(n, test_fraction)
    valid = held_out(n - test, valid_fraction)
    return n - valid - test, valid, test


def split_columns(
    split: Mapping[str, Any], dataset: Mapping[str, Any], features: Mapping[str, Any]
) -> tuple[str | None, str | None]:
    """(time column, user column) the split reads, checked against the dataset's declared
    columns before any data is read; the user column is None unless the method is
    `per_user_time`, the time column None when neither split nor dataset names one."""
    method = split.get("method")
    if method not in METHODS:
        raise FeatureError(f"split.method must be one of {', '.join(METHODS)}, got {method!r}")
    columns = dataset.get("columns") or {}
    where = f"dataset={dataset.get('name')}"
    time_key = "split.time_column" if split.get("time_column") else "dataset.time_column"
    time_column = split.get("time_column") or dataset.get("time_column")
    if method in TIMED_METHODS:
        if not time_column:
            raise FeatureError(
                f"split.method={method} needs a time column: set split.time_column "
                f"({where} has no time_column)"
            )
        if columns and time_column not in columns:
            raise FeatureError(f"{time_key} {time_column!r} is not a column of {where}")
        if columns and columns[time_column] not in NUMERIC:
            raise FeatureError(
                f"{time_key} {time_column!r} must be int64 or float64, {where} declares it "
                f"{columns[time_column]}"
            )
    if method != "per_user_time":
        return time_column, None
    user_key = "split.user_column" if split.get("user_column") else "features.user_id"
    user_column = split.get("user_column") or features.get("user_id")
    if not user_column:
        raise FeatureError(
            f"split.method=per_user_time needs a user id column: set split.user_column "
            f"(features={features.get('name')} names no user_id)"
        )
    if columns and user_column not in columns:
        hint = "" if user_key == "split.user_column" else "; set split.user_column to the raw one"
        raise FeatureError(f"{user_key} {user_column!r} is not a column of {where}{hint}")
    return time_column, user_column


def split_frame(
    df: DataFrame,
    method: str,
    valid_fraction: float,
    test_fraction: float,
    seed: int = 0,
    time_column: str | None = None,
    user_column: str | None = None,
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(train, valid, test) parts of `df`; a zero fraction gives an empty part."""
    from pyspark.sql import functions as F

    check_fractions(valid_fraction, test_fraction)
    train_cut = 1.0 - valid_fraction - test_fraction
    valid_cut = 1.0 - test_fraction
    if method == "random":
        return parts_of(tag_random(df, valid_fraction, test_fraction, seed))
    if method == "time":
        t = _time(df, method, time_column)
        quantiles = df.select(t.alias("t")).where(F.col("t").isNotNull())
        cuts = quantiles.approxQuantile("t", [train_cut, valid_cut], 1e-4)
        if not cuts:
            raise FeatureError(f"split: column {time_column!r} holds no times")
        t1, t2 = cuts
        in_train = t.isNull() | (t < t1)
        return (
            df.where(in_train) if train_cut > 0 else df.limit(0),
            df.where(~in_train & (t < t2)) if valid_fraction > 0 else df.limit(0),
            df.where(t >= t2) if test_fraction > 0 else df.limit(0),
        )
    if method == "per_user_time":
        tagged = tag_per_user(df, valid_fraction, test_fraction, seed, time_column, user_column)
        return parts_of(tagged)
    raise FeatureError(f"split.method {method!r} is not one of {', '.join(METHODS)}")


def _time(df: DataFrame, method: str, time_column: str | None) -> Column:
    """The time column as double, after checking that it is there and numeric."""
    from pyspark.sql import functions as F

    if not time_column:
        raise FeatureError(f"split.method={method} needs split.time_column")
    if time_column not in df.columns:
        raise MissingColumnError(f"split.time_column {time_column!r} is not in the data")
    if spark_kind(df.schema[time_column].dataType) not in ("integer", "float"):
        raise FeatureError(f"split.time_column {time_column!r} must be numeric")
    return F.col(f"`{time_column}`").cast("double")


def _orderable(df: DataFrame) -> list[Column]:
    """Every column but maps (which Spark can neither hash, group nor order; raw columns never
    are maps, a caller's frame might hold one)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    return [F.col(f"`{f.name}`") for f in df.schema.fields if not isinstance(f.dataType, T.MapType)]


def with_content_hash(df: DataFrame, columns: Sequence[str], seed: int) -> DataFrame:
    """`df` with `CONTENT_COLUMN`: the seeded hash of `columns` (in that order), which
    `tag_random` then uses as each row's content. recsys.preprocess hashes every column the
    dataset declares, not only those a feature set reads, so that two feature sets of one data
    set (the pipeline's ranker and two-tower) carve the same rows into the same splits."""
    from pyspark.sql import functions as F

    return df.withColumn(
        CONTENT_COLUMN, F.xxhash64(F.lit(seed), *[F.col(f"`{c}`") for c in columns])
    )


def tag_random(df: DataFrame, valid_fraction: float, test_fraction: float, seed: int) -> DataFrame:
    """`df` with `PART_COLUMN`: 0 train, 1 valid, 2 test, by the `random` rule (a seeded hash
    of each row and its copy number among identical rows). The row's content is its
    `CONTENT_COLUMN` when `df` has one (`with_content_hash`; dropped here), else its columns.

    Like `tag_per_user`, the window shuffles every row and makes plans slow to analyse:
    recsys.preprocess writes this frame once and reads the parts back.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    check_fractions(valid_fraction, test_fraction)
    hashed = CONTENT_COLUMN in df.columns
    values = _orderable(df.drop(CONTENT_COLUMN))
    content = F.col(CONTENT_COLUMN) if hashed else F.xxhash64(F.lit(seed), *values)
    # copies share the content hash: a window on that one long shuffles and sorts far less
    # than one on every column (the values are compared only between rows of equal hash).
    # Ordering by the values keeps the numbering deterministic if two different rows ever
    # collide: they are then numbered as one group, in value order.
    same = Window.partitionBy(content).orderBy(*values)
    copy = F.row_number().over(same)
    h = F.when(copy == 1, content).otherwise(
        F.xxhash64(F.lit(seed), copy, content) if hashed else F.xxhash64(F.lit(seed), copy, *values)
    )
    u = F.abs(h % F.lit(1 << 53)) / F.lit(float(1 << 53))
    train_cut = 1.0 - valid_fraction - test_fraction
    valid_cut = 1.0 - test_fraction
    part = F.when(u < train_cut, F.lit(0)).when(u < valid_cut, F.lit(1)).otherwise(F.lit(2))
    return df.withColumn(PART_COLUMN, part).drop(CONTENT_COLUMN)


def tag_frame(
    df: DataFrame,
    method: str,
    valid_fraction: float,
    test_fraction: float,
    seed: int,
    time_column: str | None = None,
    user_column: str | None = None,
) -> DataFrame:
    """`df` tagged with `PART_COLUMN` by a method in `TAGGED_METHODS` (those with a window)."""
    if method == "random":
        return tag_random(df, valid_fraction, test_fraction, seed)
    if method == "per_user_time":
        return tag_per_user(df, valid_fraction, test_fraction, seed, time_column, user_column)
    raise FeatureError(f"split.method {method!r} is not one of {', '.join(TAGGED_METHODS)}")


def _held_out(n: Column, fraction: float) -> Column:
    """`held_out` as a Spark expression (same double arithmetic, so the same counts)."""
    from pyspark.sql import functions as F

    take = F.ceil(n * F.lit(fraction) - F.lit(EPS))
    return F.greatest(F.lit(0), F.least(take, n - F.lit(MIN_KEPT)))


def tag_per_user(
    df: DataFrame,
    valid_fraction: float,
    test_fraction: float,
    seed: int,
    time_column: str | None,
    user_column: str | None,
) -> DataFrame:
    """`df` with `PART_COLUMN`: 0 train, 1 valid, 2 test, by the `per_user_time` rule.

    The window shuffles and sorts every row, and a plan holding it is slow to analyse: a
    caller that builds many plans on the parts (recsys.preprocess: fitting, then
    transforming) writes this frame once and takes `parts_of` what it reads back.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    check_fractions(valid_fraction, test_fraction)
    t = _time(df, "per_user_time", time_column)
    if not user_column:
        raise FeatureError("split.method=per_user_time needs split.user_column")
    if user_column not in df.columns:
        raise MissingColumnError(f"split.user_column {user_column!r} is not in the data")
    user = F.col(f"`{user_column}`")
    timed = user.isNotNull() & t.isNotNull()
    # the values after the hash only matter on a 64-bit hash collision between tied rows
    values = _orderable(df)
    rows = Window.partitionBy(user, timed)
    ordered = rows.orderBy(t, F.xxhash64(F.lit(seed), *values), *values)
    n = F.count(F.lit(1)).over(rows)
    position = F.row_number().over(ordered)  # 1 = the user's earliest row
    n_test = _held_out(n, test_fraction)
    n_valid = _held_out(n - n_test, valid_fraction)
    part = (
        F.when(~timed, F.lit(0))
        .when(position > n - n_test, F.lit(2))
        .when(position > n - n_test - n_valid, F.lit(1))
        .otherwise(F.lit(0))
    )
    return df.withColumn(PART_COLUMN, part)


def parts_of(tagged: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(train, valid, test) rows of a frame tagged by `tag_per_user`, without the tag."""
    from pyspark.sql import functions as F

    return tuple(  # type: ignore[return-value]
        tagged.where(F.col(PART_COLUMN) == i).drop(PART_COLUMN) for i in range(3)
    )
