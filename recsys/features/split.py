"""Seeded train / valid / test splits of a Spark DataFrame: random or by time.

- `random`: each row gets `u = |xxhash64(seed, row) mod 2**53| / 2**53` in [0, 1) from its content,
  so the split depends on the seed and the data only, never on partitioning or Spark
  settings (identical rows land in the same split, which also keeps them from leaking
  across splits). Rows with u < train share go to train, then valid, then test.
- `time`: rows are ordered by a time column; the train rows are the earliest, the test rows
  the latest, cut at the quantiles of the wanted fractions (rows at a cut time go to the
  later split). Nulls in the time column go to train.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recsys.features.columns import FeatureError, MissingColumnError, spark_kind

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

METHODS = ("random", "time")


def check_fractions(valid_fraction: float, test_fraction: float) -> None:
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise FeatureError(f"split.{name} must be in [0, 1), got {value}")
    if valid_fraction + test_fraction >= 1.0:
        raise FeatureError("split.valid_fraction + split.test_fraction must be below 1")


def split_frame(
    df: DataFrame,
    method: str,
    valid_fraction: float,
    test_fraction: float,
    seed: int = 0,
    time_column: str | None = None,
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(train, valid, test) parts of `df`; a zero fraction gives an empty part."""
    from pyspark.sql import functions as F

    check_fractions(valid_fraction, test_fraction)
    train_cut = 1.0 - valid_fraction - test_fraction
    valid_cut = 1.0 - test_fraction
    if method == "random":
        h = F.xxhash64(F.lit(seed), *[F.col(f"`{c}`") for c in df.columns])
        u = (F.abs(h % F.lit(1 << 53)) / F.lit(float(1 << 53))).alias("__u")
        tagged = df.withColumn("__u", u)
        return tuple(  # type: ignore[return-value]
            tagged.where(cond).drop("__u")
            for cond in (
                F.col("__u") < train_cut,
                (F.col("__u") >= train_cut) & (F.col("__u") < valid_cut),
                F.col("__u") >= valid_cut,
            )
        )
    if method == "time":
        if not time_column:
            raise FeatureError("split.method=time needs split.time_column")
        if time_column not in df.columns:
            raise MissingColumnError(f"split.time_column {time_column!r} is not in the data")
        if spark_kind(df.schema[time_column].dataType) not in ("integer", "float"):
            raise FeatureError(f"split.time_column {time_column!r} must be numeric")
        t = F.col(time_column).cast("double")
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
    raise FeatureError(f"split.method {method!r} is not one of {', '.join(METHODS)}")
