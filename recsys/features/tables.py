"""User and item feature tables for serving, from the processed rows.

`<out>/user_features/` and `<out>/item_features/` (parquet) hold one row per known user or
item: the encoded id (the FeatureSpec's `user_id` / `item_id` feature, index >= 2), the raw
id it encodes (`<id>_raw`, when the id has a vocabulary), and every output feature of that
entity. A user or item seen in several rows takes the values of its latest row by the
dataset's time column (ties, or no time column: the largest values, so the choice is
deterministic). Serving looks a request's raw id up here instead of recomputing features.
"""

from __future__ import annotations

from functools import reduce
from typing import TYPE_CHECKING

from recsys.features.feature_spec import FeatureSpec
from recsys.features.ops import CategoryEncode
from recsys.features.vocabulary import FIRST_KNOWN

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from recsys.features.pipeline import FeaturePipeline

TABLES = {"user": "user_features", "item": "item_features"}


def entity_tables(
    frames: list[DataFrame],
    pipeline: FeaturePipeline,
    spec: FeatureSpec,
    time_column: str | None,
) -> dict[str, DataFrame]:
    """{directory name: table} for the user and the item entity (where the spec names an id)."""
    from pyspark.sql import functions as F

    tables = {}
    for entity, directory in TABLES.items():
        key = spec.user_id if entity == "user" else spec.item_id
        if key is None:
            continue
        others = [f.name for f in spec.of_entity(entity) if f.name != key]
        order = [time_column] if time_column else []
        rows = reduce(
            lambda a, b: a.unionByName(b), [f.select(key, *others, *order) for f in frames]
        ).where(F.col(key) >= FIRST_KNOWN)
        latest = F.max(F.struct(*order, *others)).alias("__latest")
        table = rows.groupBy(key).agg(latest)
        table = table.select(key, *[F.col(f"__latest.{c}").alias(c) for c in others])
        raw = _raw_ids(pipeline, key, table.sparkSession)
        if raw is not None:
            table = table.join(raw, key, "left").select(key, f"{key}_raw", *others)
        tables[directory] = table
    return tables


def _raw_ids(pipeline: FeaturePipeline, key: str, spark):
    step = pipeline.writer(key)
    if not isinstance(step, CategoryEncode) or step.params.split is not None:
        return None
    source = step.lineage()[key][0]
    return step.vocab_for(source).spark_frame(spark, f"{key}_raw", key)
