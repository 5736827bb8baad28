"""Negative sampling for implicit feedback: k sampled items per positive, never a known positive.

A training step (`op: negative_sample`) that adds rows: for every positive (user, item) row it
draws candidate items, uniformly or by training popularity (interaction count), drops the
user's known positives and duplicates, and keeps the first `k`. A negative row copies the
positive row's user and context columns, takes `item_columns` from the sampled item (the
values of its representative training row: the largest by column order), and gets label 0.
The step changes only training data: `transform` (valid, test) and serving leave rows as
they are.

By default the training rows become the positives and their sampled negatives (implicit
feedback: a label-0 row is dropped). With `keep_negatives: true` every input row stays with
its label and sampled items never include one the user was shown (any row of the user): for
logged exposures, this trains a ranker on engagement among shown items plus unshown items as
negatives, the target a recommendation among all items is judged by.

Sampling is seeded: the same input partitions and seed give the same negatives. Positives
left with fewer than `k` negatives after a round of drawing get up to three more rounds, each
drawing twice as many candidates; a user who has interacted with nearly every item may still
end with fewer than `k`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from recsys.features.columns import FeatureError
from recsys.features.ops import CATEGORICAL_INPUTS, FeatureInfo, Op, register

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

MODES = ("uniform", "popularity")
MAX_ROUNDS = 4  # rounds of drawing for positives still short of k negatives
ROUND_STRIDE = 1 << 40  # orders a later round's candidates after an earlier round's


@dataclass
class NegativeSampleParams:
    user: str = "user_id"
    item: str = "item_id"
    k: int = 4  # negatives per positive
    mode: str = "popularity"  # uniform | popularity (probability proportional to count)
    label: str = "label"  # 1 marks positives; created (all 1) if absent
    item_columns: list[str] = field(default_factory=list)  # columns describing the item
    oversample: float = 2.0  # candidates drawn per wanted negative before filtering
    # keep the input's label-0 rows (exposed, not engaged) and never sample an exposed item
    keep_negatives: bool = False
    seed: int = 0

    def validate(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.oversample < 1.0:
            raise ValueError(f"oversample must be >= 1, got {self.oversample}")
        if self.user == self.item:
            raise ValueError("user and item must be different columns")


@register
class NegativeSample(Op):
    """k negatives per positive for implicit feedback (training rows only)."""

    op = "negative_sample"
    Params = NegativeSampleParams
    accepts = CATEGORICAL_INPUTS

    @property
    def columns(self) -> list[str]:
        return [self.params.user, self.params.item]

    @property
    def out(self) -> list[str]:
        return [self.params.label]

    def inputs(self) -> list[str]:
        return [self.params.user, self.params.item, *self.params.item_columns]

    def lineage(self) -> dict[str, list[str]]:
        return {self.params.label: [self.params.user, self.params.item]}

    def optional_online(self) -> bool:
        return True

    def _check_kind(self, column: str, kind: str) -> None:
        if column in (self.params.user, self.params.item):
            super()._check_kind(column, kind)  # item_columns may be of any type

    def transform(self, df: DataFrame) -> DataFrame:
        return df

    def transform_arrow(self, table: pa.Table) -> pa.Table:
        return table

    train_specific = True

    def transform_train(self, df: DataFrame) -> DataFrame:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        self._require_fitted()
        self.check_spark(df)
        p = self.params
        positives = df.where(F.col(p.label) > 0) if p.label in df.columns else df
        positives = positives.withColumn(p.label, F.lit(1.0))
        item_cols = [c for c in p.item_columns if c != p.item]

        items = positives.groupBy(p.item).agg(
            F.count(F.lit(1)).alias("__pop"),
            *([F.max(F.struct(*item_cols)).alias("__item")] if item_cols else []),
        )
        counts = items.select(p.item, "__pop").orderBy(p.item).toArrow()
        if counts.num_rows == 0:
            raise FeatureError(f"step {self.name!r} (negative_sample): no positive rows")
        ids = counts[p.item].combine_chunks()
        weights = (
            counts["__pop"].to_numpy().astype(np.float64)
            if p.mode == "popularity"
            else np.ones(counts.num_rows)
        )
        cdf = np.cumsum(weights) / weights.sum()
        pick = _picker(ids, cdf, df.schema[p.item].dataType)

        rid = "__rid"
        # row ids: recomputed identically wherever the plan uses them (same input, same
        # partitioning); nothing is cached, so nothing stays behind in the session
        base = positives.withColumn(rid, F.monotonically_increasing_id())
        labelled = p.keep_negatives and p.label in df.columns
        shown = df if labelled else positives  # the pairs a negative must not repeat
        known = shown.select(F.col(p.user), F.col(p.item).alias("__neg")).distinct()
        pending = base.select(rid, p.user)
        chosen = None
        for attempt in range(MAX_ROUNDS):
            # each round draws twice as many candidates for the positives still short of k
            draws = int(np.ceil(p.k * p.oversample)) * 2**attempt
            candidates = (
                pending.select(
                    rid, p.user, F.explode(F.sequence(F.lit(1), F.lit(draws))).alias("__j")
                )
                .withColumn("__neg", pick(F.rand(p.seed + attempt)))
                .join(known, [p.user, "__neg"], "left_anti")
                .groupBy(rid, "__neg")
                .agg((F.min("__j") + F.lit(attempt * ROUND_STRIDE)).alias("__order"))
            )
            if chosen is not None:
                candidates = chosen.unionByName(
                    candidates.join(chosen.select(rid, "__neg"), [rid, "__neg"], "left_anti")
                )
            ranked = Window.partitionBy(rid).orderBy("__order", "__neg")
            chosen = (
                candidates.withColumn("__n", F.row_number().over(ranked))
                .where(F.col("__n") <= p.k)
                .drop("__n")
            )
            full = chosen.groupBy(rid).count().where(F.col("count") >= p.k).select(rid)
            pending = base.select(rid, p.user).join(full, rid, "left_anti")
            if pending.isEmpty():
                break
        chosen = chosen.select(rid, "__neg")
        keep = [c for c in positives.columns if c not in (p.item, *item_cols, p.label)]
        negatives = base.select(rid, *keep).join(chosen, rid).withColumnRenamed("__neg", p.item)
        if item_cols:
            negatives = negatives.join(items.select(p.item, "__item"), p.item).select(
                *keep, p.item, *[F.col(f"__item.{c}").alias(c) for c in item_cols]
            )
        negatives = negatives.withColumn(p.label, F.lit(0.0))
        columns = positives.columns
        kept = df.withColumn(p.label, F.col(p.label).cast("double")) if labelled else positives
        return kept.select(*columns).unionByName(negatives.select(*columns))

    def describe(self, output: str) -> FeatureInfo:
        return FeatureInfo("label", stats={"negatives_per_positive": self.params.k})

    def state(self) -> dict[str, Any]:
        return {}


def _picker(ids: pa.Array, cdf: np.ndarray, spark_type):
    """Arrow UDF: a uniform draw u in [0, 1) -> the item whose cdf interval holds u."""
    from pyspark.sql import functions as F

    @F.arrow_udf(spark_type)
    def pick(u: pa.Array) -> pa.Array:
        pos = np.searchsorted(cdf, u.to_numpy(zero_copy_only=False), side="right")
        return ids.take(pa.array(np.minimum(pos, len(cdf) - 1)))

    return pick
