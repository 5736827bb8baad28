"""Raw data on disk -> Spark DataFrames, with errors that name the file or column at fault.

Layout of `data` (the `data=` key of `recsys.preprocess`):

- a directory with `train/` (and optionally `valid/`, `test/`) subdirectories, as
  `recsys.generate` writes: each present part is read as it is, missing parts are split off
  the training part (`split` config);
- anything else (one file, a directory of files, a glob): one table, split into
  train / valid / test.

Formats: parquet, or CSV with the declared columns in file order (`sep`, `header`).
Before Spark reads local parquet, every file's footer is read with pyarrow, so a corrupt or
truncated file is reported by name instead of deep inside a Spark job.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.features.columns import (
    FeatureError,
    check_arrow_type,
    check_declared,
    require_columns,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

PARTS = ("train", "valid", "test")
FORMATS = ("parquet", "csv")


@dataclass
class SourceParts:
    """Paths of the parts found under `data` (None: to be split off train)."""

    train: str
    valid: str | None
    test: str | None


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> Path:
    return Path(path[len("file://") :] if path.startswith("file://") else path)


def find_parts(data: str) -> SourceParts:
    """Which parts `data` already holds (see the module docstring)."""
    if is_local(data):
        root = _local(data)
        if not root.exists() and not any(ch in data for ch in "*?["):
            raise FeatureError(f"input {data} does not exist")
        if root.is_dir() and (root / "train").exists():
            parts = {p: str(root / p) if (root / p).exists() else None for p in PARTS}
            return SourceParts(parts["train"], parts["valid"], parts["test"])  # type: ignore[arg-type]
    return SourceParts(data, None, None)


def data_files(path: str, fmt: str) -> list[Path]:
    """The data files Spark would read at a local `path` (hidden and _ files skipped)."""
    root = _local(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        return sorted(p for p in root.parent.glob(root.name) if p.is_file())
    suffix = ".parquet" if fmt == "parquet" else ""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
        and p.name.endswith(suffix)
    )


@dataclass
class PartInfo:
    """What is known about one part before Spark reads it."""

    path: str
    rows: int | None  # from the parquet footers (local parquet), else unknown
    bytes: int  # size on disk (0 when not local)
    # the needed columns' types when every footer agrees on them (local parquet): Spark
    # then reads with this schema instead of running jobs to infer one
    schema: pa.Schema | None = None


def check_parquet_files(
    path: str, declared: Mapping[str, str], needed: list[str]
) -> tuple[int, pa.Schema | None]:
    """Read every parquet footer under a local `path`: readable, one schema, holding the
    `needed` columns with types readable as declared. Returns the row count and the needed
    columns' schema if every file has the same one of plain types (`known_schema`)."""
    files = data_files(path, "parquet")
    if not files:
        raise FeatureError(f"input {path} holds no parquet files (empty input)")
    rows = 0
    schemas = set()
    for file in files:
        try:
            meta = pq.read_metadata(file)
        except (OSError, pa.ArrowException) as e:
            raise FeatureError(f"input file {file} is not a readable parquet file: {e}") from e
        schema = meta.schema.to_arrow_schema()
        where = f"input {path}" if len(files) == 1 else f"input file {file}"
        require_columns(schema.names, needed, where)
        for name in needed:
            check_arrow_type(name, declared.get(name), schema.field(name).type)
        rows += meta.num_rows
        schemas.add(pa.schema([pa.field(n, schema.field(n).type) for n in needed]))
    return rows, known_schema(schemas.pop()) if len(schemas) == 1 else None


PLAIN_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_signed_integer,
               pa.types.is_floating, pa.types.is_boolean)  # fmt: skip


def known_schema(schema: pa.Schema) -> pa.Schema | None:
    """`schema` if Spark would infer exactly its types from the file (strings, signed
    integers, floats, booleans), else None (timestamps, decimals, nested types: let Spark
    infer them)."""
    if all(any(is_type(f.type) for is_type in PLAIN_TYPES) for f in schema):
        return schema
    return None


def inspect_part(path: str, dataset: Mapping[str, Any], needed: list[str]) -> PartInfo:
    """The checks that need no Spark, so that bad input fails before the JVM starts."""
    fmt = dataset.get("format", "parquet")
    if fmt not in FORMATS:
        raise FeatureError(f"dataset.format {fmt!r} is not one of {', '.join(FORMATS)}")
    declared = dict(dataset.get("columns") or {})
    check_declared(declared)
    if not is_local(path):
        return PartInfo(path, None, 0)
    schema = None
    if fmt == "parquet":
        rows, schema = check_parquet_files(path, declared, needed)
    else:
        if not declared:
            raise FeatureError("dataset.columns must declare the CSV columns in file order")
        if not data_files(path, "csv"):
            raise FeatureError(f"input {path} holds no files (empty input)")
        rows = None
    return PartInfo(path, rows, sum(f.stat().st_size for f in data_files(path, fmt)), schema)


def spark_schema(columns: Mapping[str, str]):
    from pyspark.sql import types as T

    types = {
        "string": T.StringType(),
        "int64": T.LongType(),
        "float64": T.DoubleType(),
        "bool": T.BooleanType(),
    }
    return T.StructType([T.StructField(name, types[t]) for name, t in columns.items()])


def read_part(
    spark: SparkSession, path: str, dataset: Mapping[str, Any], schema: pa.Schema | None = None
) -> DataFrame:
    """One part as a Spark DataFrame (lazy; `inspect_part` has checked what it can). A known
    parquet `schema` (the columns to read) spares Spark's schema inference jobs."""
    with spark_errors(f"input {path}"):
        if dataset.get("format", "parquet") == "parquet":
            if schema is not None:
                from pyspark.sql.pandas.types import from_arrow_schema

                return spark.read.schema(from_arrow_schema(schema)).parquet(path)
            return spark.read.parquet(path)
        return spark.read.csv(
            path,
            schema=spark_schema(dict(dataset.get("columns") or {})),
            sep=dataset.get("sep", ","),
            header=bool(dataset.get("header", True)),
            enforceSchema=False,
            mode="FAILFAST",
        )


def require_rows(df: DataFrame, path: str, part: str, rows: int | None = None) -> None:
    """Refuse an empty part (from the known row count, else with a Spark job)."""
    if rows is None:
        with spark_errors(f"input {path}"):
            rows = 0 if df.isEmpty() else 1
    if rows == 0:
        raise FeatureError(f"input {path} has no rows ({part} part is empty)")


# ------------------------------------------------------------------- Spark errors

_MARKER = re.compile(r"column '[^']+': value .*?(?:is not [^\n.]+)")
_FILE = re.compile(r"(file:[^\s,'\"\]]+|/[^\s,'\"\]]+\.(?:parquet|csv|txt))")


@contextlib.contextmanager
def spark_errors(context: str) -> Iterator[None]:
    """Turn a failed Spark job caused by the data into a one-line FeatureError.

    Bad values caught by the coercion (`raise_error` in columns.py) keep their message;
    failures that name a file (corrupt, unreadable, schema mismatch) keep the file. Anything
    else is a bug and keeps its traceback.
    """
    try:
        yield
    except FeatureError:
        raise
    except Exception as e:
        from py4j.protocol import Py4JError
        from pyspark.errors import PySparkException

        if not isinstance(e, PySparkException | Py4JError):
            raise
        text = str(e)
        marker = _MARKER.search(text)
        if marker:
            raise FeatureError(f"{context}: {marker.group(0)}") from e
        first = next((line.strip() for line in text.splitlines() if line.strip()), text)
        file = _FILE.search(text)
        if file or "Parquet" in text or "CSV" in text or "Malformed" in text:
            where = f"file {file.group(1)}" if file else context
            raise FeatureError(f"{where} cannot be read: {first[:300]}") from e
        raise
