"""Side tables: a user table and an item catalogue joined by key to the interactions.

A table dataset (`dataset=table` and its copies) may name them next to its interactions:

    users: {path: .../users.parquet, key: user_id, columns: {user_id: string, age: int64}}
    items: {path: .../items.parquet, key: item_id, format: csv, sep: "|", columns: {...}}

Each has its own `path`, `format`, `sep`, `header` and declared `columns` (as the dataset's;
CSV: every column in file order) and a `key`: a column declared both in the side table and in
the interactions, with the same type. Preprocessing joins each side table whose columns the
features read to every part of the interactions (Spark), so the feature steps see one table
whose columns are the interactions' and the side tables' together.

Refused, naming the file and column: a side column that is also an interactions column (which
one would a step read?), a key column absent from a file, a key value held by more than one
row of a side table (a join would copy the interaction), and an interaction whose key value is
not in the side table (its side columns would silently be null), unless `missing_keys: null`
asks for exactly that. Local parquet side tables are checked for repeated keys before Spark
starts (pyarrow reads the key column only); other side tables by a Spark job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.features.columns import SPARK_TYPES, FeatureError, check_declared
from recsys.features.source import (
    PartInfo,
    data_files,
    inspect_part,
    is_local,
    read_part,
    spark_errors,
)
from recsys.features.sql import ident

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

ROLES = ("users", "items")
MISSING_KEYS = ("error", "null")
SHOWN_KEYS = 3  # example key values an error names


@dataclass
class SideTable:
    """One side table as configured (`dataset.users` or `dataset.items`)."""

    role: str  # users | items
    path: str
    key: str
    columns: dict[str, str]
    format: str = "parquet"
    sep: str = ","
    header: bool = True
    missing_keys: str = "error"

    @property
    def where(self) -> str:
        return f"dataset.{self.role}"

    @property
    def source(self) -> dict[str, Any]:
        """The table as a dataset mapping, for the readers of source.py."""
        return {
            "format": self.format,
            "sep": self.sep,
            "header": self.header,
            "columns": self.columns,
        }

    @property
    def joined(self) -> list[str]:
        """The columns it adds to the interactions (all but its key)."""
        return [c for c in self.columns if c != self.key]


def side_tables(dataset: Mapping[str, Any]) -> list[SideTable]:
    """The side tables of a dataset config (plain mapping), checked against its columns."""
    interactions = dict(dataset.get("columns") or {})
    tables: list[SideTable] = []
    seen: dict[str, str] = {}  # joined column -> the side table that adds it
    for role in ROLES:
        node = dataset.get(role)
        if node is None:
            continue
        table = _side_table(role, node)
        check_declared(table.columns, f"{table.where}.columns")
        if table.key not in interactions:
            raise FeatureError(
                f"{table.where}.key {table.key!r} is not a column of the interactions "
                "(dataset.columns): the join needs it on both sides"
            )
        if interactions[table.key] != table.columns[table.key]:
            raise FeatureError(
                f"{table.where}.key {table.key!r} is declared {table.columns[table.key]} in "
                f"{table.where}.columns and {interactions[table.key]} in dataset.columns; "
                "declare both the same"
            )
        for column in table.joined:
            if column in interactions:
                raise FeatureError(
                    f"{table.where}.columns.{column} is also a column of the interactions "
                    "(dataset.columns): rename one, or leave it out of one"
                )
            if column in seen:
                raise FeatureError(
                    f"{table.where}.columns.{column} is also a column of dataset.{seen[column]}"
                )
            seen[column] = role
        tables.append(table)
    return tables


def _side_table(role: str, node: Mapping[str, Any]) -> SideTable:
    where = f"dataset.{role}"
    for name in ("path", "key"):
        if not node.get(name):
            raise FeatureError(f"{where}.{name} must be set")
    columns = dict(node.get("columns") or {})
    key = node["key"]
    if key not in columns:
        raise FeatureError(f"{where}.key {key!r} is not declared in {where}.columns")
    if len(columns) < 2:
        raise FeatureError(f"{where}.columns declares no column besides the key {key!r}")
    missing = node.get("missing_keys", "error")
    if missing not in MISSING_KEYS:
        raise FeatureError(f"{where}.missing_keys {missing!r} is not one of error, null")
    return SideTable(
        role=role,
        path=str(node["path"]),
        key=key,
        columns=columns,
        format=node.get("format", "parquet"),
        sep=node.get("sep", ","),
        header=bool(node.get("header", True)),
        missing_keys=missing,
    )


def declared_columns(dataset: Mapping[str, Any]) -> dict[str, str]:
    """Every column the features may read: the interactions' and the side tables'."""
    columns = dict(dataset.get("columns") or {})
    for table in side_tables(dataset):
        columns.update({c: table.columns[c] for c in table.joined})
    return columns


def needed_sides(tables: Sequence[SideTable], needed: Sequence[str]) -> list[SideTable]:
    """The side tables that hold a needed column (the others are not read at all)."""
    return [t for t in tables if any(c in needed for c in t.joined)]


# ------------------------------------------------------------------ before Spark


def inspect_side(table: SideTable, needed: Sequence[str]) -> PartInfo:
    """The checks that need no Spark: the file, its columns and types (source.py), and for
    local parquet no key value on two rows."""
    columns = [table.key, *(c for c in table.joined if c in needed)]
    info = inspect_part(table.path, table.source, columns)
    if table.format == "parquet" and is_local(table.path):
        files = data_files(table.path, "parquet")
        keys = pa.concat_arrays(
            [k for f in files for k in pq.read_table(f, columns=[table.key])[table.key].chunks]
        )
        check_unique(keys, table)
    return info


def check_unique(keys: pa.Array, table: SideTable) -> None:
    """Refuse key values held by more than one row of a side table."""
    counts = pc.value_counts(keys.drop_null())
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        values = repeated.field("values").to_pylist()
        raise FeatureError(_repeated(table, len(repeated), values[:SHOWN_KEYS]))


def _repeated(table: SideTable, n: int, shown: list[Any]) -> str:
    return (
        f"{table.where} {table.path}: key column {table.key!r} holds {n:,} value"
        f"{'s' if n != 1 else ''} on more than one row ({_shown(shown, n)}); "
        "a side table needs one row per key"
    )


def _shown(values: list[Any], n: int) -> str:
    text = ", ".join(repr(str(v)) if v is not None else "null" for v in values)
    return f"e.g. {text}" if n > len(values) else text


# ------------------------------------------------------------------------ Spark


def read_side(spark: SparkSession, table: SideTable, info: PartInfo, needed: Sequence[str]):
    """The side table's key and needed columns (key cast to its declared type), checked for
    repeated keys by Spark when pyarrow could not check it first."""
    from pyspark.sql import functions as F

    df = read_part(spark, table.path, table.source, info.schema)
    key_type = SPARK_TYPES[table.columns[table.key]]
    columns = [c for c in table.joined if c in needed]
    df = df.select(F.expr(f"CAST({ident(table.key)} AS {key_type})").alias(table.key), *columns)
    if table.format != "parquet" or not is_local(table.path):
        with spark_errors(table.path, table.source):
            repeated = (
                df.where(F.col(table.key).isNotNull())
                .groupBy(table.key)
                .count()
                .where(F.col("count") > 1)
                .agg(F.count(F.lit(1)).alias("n"), _first_values(table.key).alias("shown"))
                .first()
            )
        if repeated is not None and repeated["n"]:
            raise FeatureError(_repeated(table, repeated["n"], list(repeated["shown"])))
    return df


def _first_values(column: str):
    """The first SHOWN_KEYS distinct values of `column` in sorted order (an aggregate)."""
    from pyspark.sql import functions as F

    values = F.sort_array(F.collect_set(F.col(column).cast("string")))
    return F.slice(values, 1, SHOWN_KEYS)


def join_side(df: DataFrame, side: DataFrame, table: SideTable, path: str) -> DataFrame:
    """`df` (one part of the interactions, read from `path`) with the side table's columns;
    refuses rows whose key the side table lacks unless `missing_keys: null` (one Spark job)."""
    from pyspark.sql import functions as F

    key_type = SPARK_TYPES[table.columns[table.key]]
    key = F.expr(f"CAST({ident(table.key)} AS {key_type})")
    left = df.withColumn(table.key, key)
    if table.missing_keys == "error":
        with spark_errors(path):
            unmatched = (
                left.select(table.key)
                .join(side.select(table.key), table.key, "left_anti")
                .agg(
                    F.count(F.lit(1)).alias("rows"),
                    F.count_distinct(F.col(table.key)).alias("keys"),
                    _first_values(table.key).alias("shown"),
                    F.count_if(F.col(table.key).isNull()).alias("nulls"),
                )
                .first()
            )
        if unmatched is not None and unmatched["rows"]:
            raise FeatureError(_unmatched(table, path, unmatched))
    return left.join(side, table.key, "left")


def _unmatched(table: SideTable, path: str, found: Any) -> str:
    rows, keys, nulls = int(found["rows"]), int(found["keys"]), int(found["nulls"])
    what = []
    if keys:
        what.append(
            f"{keys:,} {table.key} value{'s' if keys != 1 else ''} missing from {table.path} "
            f"({_shown(list(found['shown']), keys)})"
        )
    if nulls:
        what.append(f"{nulls:,} with a null {table.key}")
    return (
        f"input {path}: {rows:,} row{'s' if rows != 1 else ''} have no match in {table.where}: "
        f"{'; '.join(what)}; fix the data or set {table.where}.missing_keys=null to keep "
        "them with null side columns"
    )
