"""Declared raw columns: logical types, type checks and coercion, in Spark and in Arrow.

A dataset config declares each raw column with a logical type (`string`, `int64`, `float64`,
`bool`). Data in the wild drifts from that: booleans arrive as booleans or as the strings
"true"/"false", timestamps as integers or floats, ids as integers. Coercion accepts those
lossless or conventional forms and turns anything else into an error naming the column, the
same way offline (Spark) and online (Arrow).

| declared | accepted physical types                                                      |
|----------|-------------------------------------------------------------------------------|
| string   | string; integers (decimal digits)                                             |
| int64    | integers; floats (truncated toward zero; NaN and out of range are null)       |
| float64  | integers; floats                                                              |
| bool     | booleans; strings "true"/"false" (any case); integers 0/1                     |
| list<string> | lists (parquet list<...>) of strings or integers                          |
| list<int64>  | lists of integers                                                          |

A list column is read as a list: the `category` step encodes it as a multi-valued feature
(`max_len` set, no `split`). CSV has no list type: a CSV list column is declared `string` and
split by the `category` step (`split:`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.errors import RecsysError
from recsys.features.sql import ident, literal

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import DataType

# list type -> the logical type of its elements
LIST_TYPES: dict[str, str] = {"list<string>": "string", "list<int64>": "int64"}
SCALAR_TYPES: tuple[str, ...] = ("string", "int64", "float64", "bool")
LOGICAL_TYPES: tuple[str, ...] = (*SCALAR_TYPES, *LIST_TYPES)
ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "list<string>": pa.list_(pa.string()),
    "list<int64>": pa.list_(pa.int64()),
}
SPARK_TYPES: dict[str, str] = {
    "string": "string",
    "int64": "bigint",
    "float64": "double",
    "bool": "boolean",
    "list<string>": "array<string>",
    "list<int64>": "array<bigint>",
}


class FeatureError(RecsysError, ValueError):
    """Bad feature input or configuration; the message names the step, column or file."""


class MissingColumnError(FeatureError):
    """A column the pipeline needs is not in the data."""


class ColumnTypeError(FeatureError):
    """A column holds values of a type the pipeline cannot use."""


# ----------------------------------------------------------------------- kinds of types


def arrow_kind(t: pa.DataType) -> str:
    """`string`, `integer`, `float`, `bool`, `list`, `null` or `other`."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return "list"
    if pa.types.is_null(t):
        return "null"
    return "other"


def spark_kind(t: DataType) -> str:
    """The same kinds as `arrow_kind`, for a Spark SQL type."""
    from pyspark.sql import types as T

    if isinstance(t, T.StringType):
        return "string"
    if isinstance(t, T.ByteType | T.ShortType | T.IntegerType | T.LongType):
        return "integer"
    if isinstance(t, T.FloatType | T.DoubleType | T.DecimalType):
        return "float"
    if isinstance(t, T.BooleanType):
        return "bool"
    if isinstance(t, T.ArrayType):
        return "list"
    if isinstance(t, T.NullType):
        return "null"
    return "other"


ACCEPTED: dict[str, tuple[str, ...]] = {
    "string": ("string", "integer", "null"),
    "int64": ("integer", "float", "null"),
    "float64": ("integer", "float", "null"),
    "bool": ("bool", "string", "integer", "null"),
    "list<string>": ("list", "null"),
    "list<int64>": ("list", "null"),
}
# what a list column's elements may be
ACCEPTED_ELEMENTS: dict[str, tuple[str, ...]] = {
    "list<string>": ("string", "integer", "null"),
    "list<int64>": ("integer", "null"),
}


def check_declared(columns: Mapping[str, str], where: str = "dataset.columns") -> None:
    for name, logical in columns.items():
        if logical not in LOGICAL_TYPES:
            raise FeatureError(
                f"{where}.{name}: type {logical!r} is not one of {', '.join(LOGICAL_TYPES)}"
            )


def _check_accepted(
    column: str, logical: str, kind: str, shown: str, element: str | None = None
) -> None:
    """Refuse a stored kind (and a list's `element` kind) not readable as `logical`."""
    accepted = ACCEPTED[logical]
    if kind == "list" and logical in LIST_TYPES:
        accepted = ACCEPTED_ELEMENTS[logical]
        kind = element or "null"
        what = f"lists of {', '.join(k for k in accepted if k != 'null')}"
    else:
        what = ", ".join(k for k in accepted if k != "null")
    if kind not in accepted:
        hint = ""
        if kind == "list":
            hint = "; declare it list<string> or list<int64> to read it as a list"
        raise ColumnTypeError(
            f"column {column!r} has type {shown}, which cannot be read as the declared "
            f"{logical} (accepted: {what}){hint}"
        )


def _arrow_element(t: pa.DataType) -> str | None:
    return arrow_kind(t.value_type) if arrow_kind(t) == "list" else None


def check_arrow_type(column: str, logical: str | None, t: pa.DataType) -> None:
    """Refuse a stored Arrow type that cannot be read as the declared logical type."""
    if logical is not None:
        _check_accepted(column, logical, arrow_kind(t), str(t), _arrow_element(t))


def require_columns(present: Iterable[str], needed: Iterable[str], where: str) -> None:
    present = set(present)
    missing = [c for c in needed if c not in present]
    if missing:
        raise MissingColumnError(
            f"{where}: missing column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(c) for c in missing)}"
        )


# ------------------------------------------------------------------------------ Spark


def coerce_spark(df: DataFrame, declared: Mapping[str, str], where: str) -> DataFrame:
    """Select the declared columns of `df` with their logical types (lazy; bad values raise)."""
    require_columns(df.columns, declared, where)
    types = {f.name: f.dataType for f in df.schema.fields}
    exprs = []
    for name, logical in declared.items():
        kind = spark_kind(types[name])
        element = spark_kind(types[name].elementType) if kind == "list" else None
        _check_accepted(name, logical, kind, types[name].simpleString(), element)
        exprs.append(f"{coerce_sql(name, logical, kind)} AS {ident(name)}")
    return df.selectExpr(*exprs)


def coerce_sql(name: str, logical: str, kind: str) -> str:
    """One declared column read as its logical type, as Spark SQL text."""
    c = ident(name)
    if logical == "bool" and kind == "string":
        bad = f"raise_error(concat({literal(f'column {name!r}: value ' + chr(39))}, {c}, "
        bad += f"{literal(chr(39) + ' is not true or false')}))"
        return (
            f"CASE WHEN {c} IS NULL THEN CAST(NULL AS BOOLEAN) WHEN lower({c}) = 'true' "
            f"THEN true WHEN lower({c}) = 'false' THEN false ELSE CAST({bad} AS BOOLEAN) END"
        )
    if logical == "bool" and kind == "integer":
        bad = f"raise_error(concat({literal(f'column {name!r}: value ')}, CAST({c} AS STRING), "
        bad += f"{literal(' is not 0 or 1')}))"
        return (
            f"CASE WHEN {c} IS NULL THEN CAST(NULL AS BOOLEAN) WHEN {c} = 1 THEN true "
            f"WHEN {c} = 0 THEN false ELSE CAST({bad} AS BOOLEAN) END"
        )
    if logical == "int64" and kind == "float":
        return float_to_int64_sql(c)
    return f"CAST({c} AS {SPARK_TYPES[logical].upper()})"


INT64_LIMIT = 2.0**63


def float_to_int64_sql(x: str) -> str:
    """Truncate toward zero; NaN and values outside the int64 range are null (SQL text)."""
    x = f"CAST({x} AS DOUBLE)"
    bad = f"isnan({x}) OR {x} >= {literal(INT64_LIMIT)} OR {x} < {literal(-INT64_LIMIT)}"
    return f"CASE WHEN {bad} THEN CAST(NULL AS BIGINT) ELSE CAST({x} AS BIGINT) END"


def arrow_float_to_int64(values: pa.Array) -> pa.Array:
    """Arrow twin of `float_to_int64_sql`."""
    x = values.cast(pa.float64())
    bad = pc.or_(pc.is_nan(x), pc.or_(pc.greater_equal(x, INT64_LIMIT), pc.less(x, -INT64_LIMIT)))
    kept = pc.if_else(bad.fill_null(False), pa.scalar(None, pa.float64()), x)
    return pc.trunc(kept).cast(pa.int64())


# ------------------------------------------------------------------------------ Arrow


def coerce_arrow(values: pa.Array | pa.ChunkedArray, name: str, logical: str) -> pa.Array:
    """One column as its logical Arrow type, by the table in the module docstring."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    kind = arrow_kind(values.type)
    _check_accepted(name, logical, kind, str(values.type), _arrow_element(values.type))
    target = ARROW_TYPES[logical]
    if kind == "null":
        return pa.nulls(len(values), target)
    if logical == "bool" and kind == "string":
        low = pc.utf8_lower(values)
        is_true, is_false = pc.equal(low, "true"), pc.equal(low, "false")
        _refuse_bad(values, pc.invert(pc.or_(is_true, is_false)), name, "is not true or false")
        return pc.if_else(values.is_null(), pa.scalar(None, pa.bool_()), is_true)
    if logical == "bool" and kind == "integer":
        ok = pc.or_(pc.equal(values, 0), pc.equal(values, 1))
        _refuse_bad(values, pc.invert(ok), name, "is not 0 or 1")
        return pc.equal(values, 1)
    if logical == "int64" and kind == "float":
        return arrow_float_to_int64(values)
    return values.cast(target)


def _refuse_bad(values: pa.Array, bad: pa.Array, name: str, what: str) -> None:
    bad = bad.fill_null(False)
    if pc.any(bad).as_py():
        first = values.filter(bad)[0].as_py()
        shown = f"'{first}'" if isinstance(first, str) else str(first)
        raise ColumnTypeError(f"column {name!r}: value {shown} {what}")


def coerce_table(table: pa.Table, declared: Mapping[str, str], where: str) -> pa.Table:
    """The declared columns of `table` (all must be present) with their logical types."""
    require_columns(table.column_names, declared, where)
    arrays = [coerce_arrow(table[name], name, logical) for name, logical in declared.items()]
    return pa.Table.from_arrays(arrays, names=list(declared))


def rows_to_table(rows: list[dict[str, Any]], declared: Mapping[str, str], where: str) -> pa.Table:
    """Records (what a serving request carries) as a table of the declared columns.

    A key missing from some records is a null there; a key missing from every record is a
    missing column. Mixed Python types within a column (True and "true") are accepted as far
    as the coercion table allows.
    """
    if not rows:
        raise FeatureError(f"{where}: no rows")
    present = set().union(*(r.keys() for r in rows))
    require_columns(present, declared, where)
    arrays = []
    for name, logical in declared.items():
        values = [r.get(name) for r in rows]
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arr = _mixed_to_arrow(values, name, logical)
        arrays.append(coerce_arrow(arr, name, logical))
    return pa.Table.from_arrays(arrays, names=list(declared))


def _mixed_to_arrow(values: list[Any], name: str, logical: str) -> pa.Array:
    """A column whose records mix Python types: booleans and strings, ints and floats."""
    if logical == "bool":
        return pa.array(
            [None if v is None else str(v).lower() if isinstance(v, bool) else v for v in values]
        )
    if logical in ("int64", "float64") and all(
        v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values
    ):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    kinds = sorted({type(v).__name__ for v in values if v is not None})
    raise ColumnTypeError(f"column {name!r} mixes values of types {', '.join(kinds)}")


def as_numpy(values: pa.Array, fill: float | int = 0) -> np.ndarray:
    """A numeric column as numpy with nulls replaced by `fill`."""
    return values.fill_null(fill).to_numpy(zero_copy_only=False)
