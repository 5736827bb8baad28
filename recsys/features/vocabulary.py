"""Vocabularies: value -> index by the project's encoding (DESIGN.md, "Encoding").

Index 0 is missing (a null or empty value, and list padding), 1 is unknown (not in the
vocabulary), and known values take 2, 3, ... in descending training frequency; ties go to the
smaller value in byte order (UTF-8), so a fit is deterministic. Values are kept in their
string form (integers as digits, booleans as true/false), like the hash in `hashing.py`.

Saved as parquet (`value` string, `count` int64, `index` int64), one row per known value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.features.columns import FeatureError
from recsys.features.hashing import is_missing, string_form

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

MISSING = 0
UNKNOWN = 1
FIRST_KNOWN = 2


@dataclass
class Vocabulary:
    """Known values in index order (index = position + 2) with their training counts."""

    values: pa.Array  # string
    counts: np.ndarray  # int64, same length, non-increasing

    @property
    def size(self) -> int:
        """Embedding rows needed: the known values plus missing and unknown."""
        return len(self.values) + FIRST_KNOWN

    def __len__(self) -> int:
        return len(self.values)

    def lookup(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """int64 index per value: 0 missing, 1 unknown, known values from 2."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        strings = string_form(values)
        pos = pc.index_in(strings, value_set=self.values)
        index = pc.add(pos.cast(pa.int64()), FIRST_KNOWN).fill_null(UNKNOWN)
        return np.where(is_missing(strings), MISSING, index.to_numpy(zero_copy_only=False))

    def lookup_lists(
        self, values: pa.Array | pa.ChunkedArray, sep: str | None, max_len: int
    ) -> pa.Array:
        """Delimited strings (`sep`), or lists (`sep` None), -> list<int64> of exactly
        `max_len` indices (truncated, 0-padded)."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        n = len(values)
        if sep is None:
            lists = values.cast(pa.list_(pa.string()))
        else:
            lists = pc.split_pattern(values.cast(pa.string()), pattern=sep)
        lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
        tokens = pc.list_flatten(lists)
        codes = self.lookup(tokens) if len(tokens) else np.zeros(0, np.int64)
        row = np.repeat(np.arange(n), lengths)
        starts = np.cumsum(lengths) - lengths
        pos = np.arange(len(codes)) - np.repeat(starts, lengths)
        keep = pos < max_len
        flat = np.zeros(n * max_len, dtype=np.int64)
        flat[row[keep] * max_len + pos[keep]] = codes[keep]
        offsets = pa.array(np.arange(0, n * max_len + 1, max_len, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(flat, pa.int64()))

    def index_table(self) -> pa.Table:
        return pa.table(
            {
                "value": self.values,
                "count": pa.array(self.counts, pa.int64()),
                "index": pa.array(np.arange(len(self)) + FIRST_KNOWN, pa.int64()),
            }
        )

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.index_table(), path)

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as e:
            raise FeatureError(f"cannot read vocabulary {path}: {e}") from e
        if table.column_names != ["value", "count", "index"]:
            raise FeatureError(f"vocabulary {path} has columns {table.column_names}")
        index = table["index"].to_numpy()
        if not np.array_equal(index, np.arange(len(index)) + FIRST_KNOWN):
            raise FeatureError(f"vocabulary {path}: indices are not 2, 3, ... in row order")
        return cls(table["value"].combine_chunks(), table["count"].to_numpy())

    @classmethod
    def from_counts(cls, table: pa.Table) -> Vocabulary:
        """From a (value, count) table already in index order."""
        values = table["value"].combine_chunks().cast(pa.string())
        return cls(values, table["count"].to_numpy().astype(np.int64))

    def spark_frame(self, spark, value_col: str, index_col: str) -> DataFrame:
        """(value, index) as a Spark DataFrame, for joins."""
        table = pa.table(
            {
                value_col: self.values,
                index_col: pa.array(np.arange(len(self)) + FIRST_KNOWN, pa.int64()),
            }
        )
        return spark.createDataFrame(table)


def fit_vocabulary(values: DataFrame, min_freq: int, max_size: int | None) -> Vocabulary:
    """Count the single string column `value` of `values` (Spark) into a Vocabulary."""
    from pyspark.sql import functions as F

    counts = (
        values.where(F.col("value").isNotNull() & (F.col("value") != ""))
        .groupBy("value")
        .agg(F.count(F.lit(1)).alias("count"))
        .where(F.col("count") >= min_freq)
        .orderBy(F.col("count").desc(), F.col("value").asc())
    )
    if max_size is not None:
        counts = counts.limit(max_size)
    table = counts.toArrow()
    # sorting again on the driver keeps the order independent of how Spark collected it
    order = pc.sort_indices(table, sort_keys=[("count", "descending"), ("value", "ascending")])
    return Vocabulary.from_counts(table.take(order))
