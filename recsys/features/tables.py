"""User and item feature tables for serving, from the processed rows.

`<out>/user_features/` and `<out>/item_features/` (parquet) hold one row per known user or
item: the encoded id (the FeatureSpec's `user_id` / `item_id` feature, index >= 2), the raw
id it encodes (`<id>_raw`, when the id has a vocabulary), and every output feature of that
entity. A user or item seen in several rows takes the values of its latest row by the
dataset's time column (ties, or no time column: the largest values, so the choice is
deterministic). Serving looks a request's raw id up here instead of recomputing features.

Both tables come from one Spark job (`latest_rows`, written partitioned by table); the raw
ids are then added from the vocabulary, which the driver holds anyway (`finish_table`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.features.feature_spec import FeatureSpec
from recsys.features.ops import CategoryEncode
from recsys.features.vocabulary import FIRST_KNOWN, Vocabulary

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from recsys.features.pipeline import FeaturePipeline

TABLE_COLUMN = "__table"


@dataclass
class TableSpec:
    directory: str  # user_features | item_features
    key: str  # the encoded id feature
    features: list[str]  # the entity's other features
    vocabulary: Vocabulary | None  # decodes the key into the raw id


def table_specs(pipeline: FeaturePipeline, spec: FeatureSpec) -> list[TableSpec]:
    """The tables this spec calls for: one per entity (user, item) whose id it names."""
    tables = []
    for entity, key in (("user", spec.user_id), ("item", spec.item_id)):
        if key is None:
            continue
        features = [f.name for f in spec.of_entity(entity) if f.name != key]
        step = pipeline.writer(key)
        vocab = None
        if isinstance(step, CategoryEncode) and step.params.split is None:
            vocab = step.vocab_for(step.lineage()[key][0])
        tables.append(TableSpec(f"{entity}_features", key, features, vocab))
    return tables


def latest_rows(processed: DataFrame, tables: list[TableSpec], time_column: str | None):
    """One DataFrame with every table's rows, tagged by `TABLE_COLUMN` (for partitionBy)."""
    from pyspark.sql import functions as F

    order = [time_column] if time_column else []
    frames = []
    for table in tables:
        latest = F.max(F.struct(*order, *table.features)).alias("__latest")
        rows = (
            processed.where(F.col(table.key) >= FIRST_KNOWN)
            .groupBy(table.key)
            .agg(latest)
            .select(table.key, *[F.col(f"__latest.{c}").alias(c) for c in table.features])
            .withColumn(TABLE_COLUMN, F.lit(table.directory))
        )
        frames.append(rows)
    return reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), frames)


def finish_table(staging: Path, target: Path, table: TableSpec) -> int:
    """Move one table out of the staging directory with its own columns and the raw ids."""
    source = staging / f"{TABLE_COLUMN}={table.directory}"
    target.mkdir()
    rows = 0
    for file in sorted(source.glob("*.parquet")) if source.is_dir() else []:
        data = pq.read_table(file, columns=[table.key, *table.features])
        data = data.replace_schema_metadata(None)
        if table.vocabulary is not None:
            index = data[table.key].to_numpy() - FIRST_KNOWN
            raw = table.vocabulary.values.take(pa.array(np.asarray(index, dtype=np.int64)))
            data = data.add_column(1, f"{table.key}_raw", raw)
        pq.write_table(data, target / file.name)
        rows += data.num_rows
    return rows
