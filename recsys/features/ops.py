"""Feature operations: each one `fit`s on training data and `transform`s Spark or Arrow data.

An operation reads some columns and writes others (in place unless `out` names new ones).
It has three ways to run, which must agree value for value:

- `fit(df)` learns its state from a Spark DataFrame of training rows (vocabularies,
  statistics); `fit_transform(df)` fits and returns the transformed training rows (equal to
  `transform` except for target encoding, whose training rows get out-of-fold means);
- `transform(df)` applies the fitted state to any Spark DataFrame;
- `transform_arrow(table)` applies it to a pyarrow Table without Spark (serving), vectorised.

State is plain data: `state()` returns JSON-able values and `artifacts()` the vocabularies
(parquet), so that `FeaturePipeline.save/load` never pickles. Each operation is configured by
a dataclass of parameters (`Params`), which `build_op` checks before any data is touched.

Missing values: a null, or an empty string in a string column. Index-producing operations
map missing to 0 (DESIGN.md, "Encoding"); continuous ones map it to 0.0 after their formula
(log, min-max) or to the fitted prior (target encoding).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.features.columns import (
    ColumnTypeError,
    FeatureError,
    arrow_float_to_int64,
    arrow_kind,
    as_numpy,
    float_to_int64_sql,
    require_columns,
    spark_kind,
)
from recsys.features.hashing import (
    check_buckets,
    hash_bucket,
    hash_bucket_sql,
    is_missing,
    spark_is_missing,
    string_form,
)
from recsys.features.sql import ident, literal
from recsys.features.sql import missing as sql_missing
from recsys.features.vocabulary import FIRST_KNOWN, MISSING, UNKNOWN, Vocabulary

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

CATEGORICAL_INPUTS = ("string", "integer", "bool")
NUMERIC_INPUTS = ("integer", "float")


@dataclass
class FeatureInfo:
    """What an operation says about one output column, for the FeatureSpec."""

    kind: str
    size: int | None = None
    max_len: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    vocabulary: str | None = None  # artifact key (see Op.artifacts)


# ------------------------------------------------------------------------------ base


@dataclass
class ColumnsParams:
    columns: list[str] = field(default_factory=list)
    out: list[str] | None = None  # output names, one per column; default: in place

    def validate(self) -> None:
        if not self.columns or not all(isinstance(c, str) and c for c in self.columns):
            raise ValueError("columns must list at least one column name")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"columns repeat a name: {self.columns}")
        if self.out is not None and len(self.out) != len(self.columns):
            raise ValueError(f"out names {len(self.out)} columns for {len(self.columns)} inputs")


class Op:
    """One named step of a FeaturePipeline."""

    op: ClassVar[str]  # the name used in configs and saved state
    Params: ClassVar[type]
    accepts: ClassVar[tuple[str, ...]] = CATEGORICAL_INPUTS + NUMERIC_INPUTS
    stateful: ClassVar[bool] = False
    default_suffix: ClassVar[str | None] = None  # out = column + suffix when out is unset

    def __init__(self, name: str, params: Any) -> None:
        self.name = name
        self.params = params
        self.fitted = not self.stateful
        self.input_kinds: dict[str, str] = {}

    # ---------------------------------------------------------------- columns

    @property
    def columns(self) -> list[str]:
        return list(self.params.columns)

    @property
    def out(self) -> list[str]:
        if self.params.out is not None:
            return list(self.params.out)
        if self.default_suffix:
            return [c + self.default_suffix for c in self.columns]
        return self.columns

    def inputs(self) -> list[str]:
        """Columns this step reads."""
        return self.columns

    def lineage(self) -> dict[str, list[str]]:
        """Each output column -> the columns it is computed from."""
        return {o: [c] for c, o in zip(self.columns, self.out, strict=True)}

    def optional_online(self) -> bool:
        """True if serving may skip this step when its inputs are absent (labels)."""
        return False

    # ------------------------------------------------------------------ types

    def _check_kinds(self, kinds: dict[str, str], where: str) -> None:
        require_columns(kinds, self.inputs(), f"step {self.name!r} ({self.op}) on {where}")
        for column in self.inputs():
            self._check_kind(column, kinds[column])
        self.input_kinds.update({c: kinds[c] for c in self.inputs()})

    def allowed_kinds(self) -> tuple[str, ...]:
        """Kinds of input columns this step takes (see columns.arrow_kind)."""
        return self.accepts

    def _check_kind(self, column: str, kind: str) -> None:
        if kind != "null" and kind not in self.allowed_kinds():
            raise ColumnTypeError(
                f"step {self.name!r} ({self.op}): column {column!r} is {kind}, "
                f"expected {' or '.join(self.allowed_kinds())}"
            )

    def check_spark(self, df: DataFrame) -> None:
        self._check_kinds({f.name: spark_kind(f.dataType) for f in df.schema.fields}, "data")

    def check_arrow(self, table: pa.Table) -> None:
        self._check_kinds({f.name: arrow_kind(f.type) for f in table.schema}, "batch")

    def _is_string(self, column: str) -> bool:
        return self.input_kinds.get(column) == "string"

    # ------------------------------------------------------------------- runs

    def fit(self, df: DataFrame) -> None:
        self.check_spark(df)
        self._fit(df)
        self.fitted = True

    def _fit(self, df: DataFrame) -> None:
        """Learn state from training rows (stateful operations override this)."""

    def fit_transform(self, df: DataFrame) -> DataFrame:
        """Fit on training rows and return them transformed (see `transform_train`)."""
        self.fit(df)
        return self.transform_train(df)

    def transform(self, df: DataFrame) -> DataFrame:
        self._require_fitted()
        self.check_spark(df)
        return self._transform(df)

    train_specific: ClassVar[bool] = False
    """True if training rows are transformed differently (out-of-fold means, sampling)."""

    def transform_train(self, df: DataFrame) -> DataFrame:
        """The training rows' transform; the same as `transform` unless `train_specific`."""
        return self.transform(df)

    def transform_arrow(self, table: pa.Table) -> pa.Table:
        self._require_fitted()
        self.check_arrow(table)
        return self._transform_arrow(table)

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise FeatureError(f"step {self.name!r} ({self.op}) is not fitted; call fit first")

    def _transform(self, df: DataFrame) -> DataFrame:
        exprs = {o: self.spark_expr(c) for c, o in zip(self.columns, self.out, strict=True)}
        return df.withColumns(exprs)

    def spark_sql(self, column: str) -> str:
        """The output for one input column as Spark SQL text (see sql.py for why text)."""
        raise NotImplementedError

    def _transform_arrow(self, table: pa.Table) -> pa.Table:
        for column, out in zip(self.columns, self.out, strict=True):
            table = set_column(table, out, self.arrow_expr(column, table[column]))
        return table

    def spark_expr(self, column: str) -> Column:
        from pyspark.sql import functions as F

        return F.expr(self.spark_sql(column))

    def arrow_expr(self, column: str, values: pa.ChunkedArray) -> pa.Array:
        raise NotImplementedError

    # ---------------------------------------------------------------- state

    def state(self) -> dict[str, Any]:
        """Fitted statistics as JSON-able data (vocabularies go to `artifacts`)."""
        return {}

    def load_state(self, state: dict[str, Any], artifacts: dict[str, Vocabulary]) -> None:
        self.fitted = True

    def artifacts(self) -> dict[str, Vocabulary]:
        """Vocabulary tables to save as parquet, by key."""
        return {}

    def describe(self, output: str) -> FeatureInfo:
        """Kind, size and statistics of one output column."""
        kind = self.input_kinds.get(self.lineage()[output][0], "float")
        if kind in ("integer", "float", "bool"):
            return FeatureInfo("continuous")
        raise FeatureError(
            f"output {output!r} is a {kind} column; encode it (category, map, hash) to use it"
        )


def set_column(table: pa.Table, name: str, values: pa.Array | np.ndarray) -> pa.Table:
    """`table` with column `name` replaced or appended."""
    if isinstance(values, np.ndarray):
        values = pa.array(values)
    i = table.schema.get_field_index(name)
    if i >= 0:
        return table.set_column(i, name, values)
    return table.append_column(name, values)


def case_index_sql(column: str, is_string: bool, values: list[str]) -> str:
    """Index by a CASE WHEN over a short list of known values (no join): 0, 1 or 2 + position."""
    value = f"CAST({ident(column)} AS STRING)"
    whens = " ".join(
        f"WHEN {value} = {literal(v)} THEN {FIRST_KNOWN + i}" for i, v in enumerate(values)
    )
    return (
        f"CAST(CASE WHEN {sql_missing(column, is_string)} THEN {MISSING} {whens} "
        f"ELSE {UNKNOWN} END AS BIGINT)"
    )


def _regex_literal(sep: str) -> str:
    """A Java regex matching `sep` literally (Spark's `split` takes a regex)."""
    return re.escape(sep)


# ----------------------------------------------------------------------- fill, cast


@dataclass
class FillParams(ColumnsParams):
    value: Any = None

    def validate(self) -> None:
        super().validate()
        if self.value is None or not isinstance(self.value, str | int | float | bool):
            raise ValueError(f"value must be a string, number or boolean, got {self.value!r}")


class Fill(Op):
    """Replace nulls with a constant."""

    op = "fill"
    Params = FillParams

    def _check_kind(self, column: str, kind: str) -> None:
        super()._check_kind(column, kind)
        value = self.params.value
        ok = {
            "string": isinstance(value, str),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, int | float) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "null": True,
        }[kind]
        if not ok:
            raise ColumnTypeError(
                f"step {self.name!r} (fill): value {value!r} does not fit {kind} column {column!r}"
            )

    def spark_sql(self, column: str) -> str:
        return f"coalesce({ident(column)}, {literal(self.params.value)})"

    def arrow_expr(self, column: str, values: pa.ChunkedArray) -> pa.Array:
        t = values.type
        if pa.types.is_null(t):
            t = pa.array([self.params.value]).type
        return pc.fill_null(values.cast(t), pa.scalar(self.params.value).cast(t))


@dataclass
class CastParams(ColumnsParams):
    to: str = "int64"

    def validate(self) -> None:
        super().validate()
        if self.to not in CAST_TARGETS:
            raise ValueError(f"to must be one of {', '.join(CAST_TARGETS)}, got {self.to!r}")


CAST_TARGETS = {"int64": "bigint", "float64": "double", "string": "string"}
CAST_FROM = {
    "int64": ("bool", "integer", "float"),
    "float64": ("bool", "integer", "float"),
    "string": ("bool", "integer", "string"),
}


class Cast(Op):
    """Change the type: booleans to 0/1, floats to int64 (toward zero; NaN, overflow null)..."""

    op = "cast"
    Params = CastParams

    def allowed_kinds(self) -> tuple[str, ...]:
        return CAST_FROM[self.params.to]

    def spark_sql(self, column: str) -> str:
        if self.params.to == "int64" and self.input_kinds[column] == "float":
            return float_to_int64_sql(ident(column))
        return f"CAST({ident(column)} AS {CAST_TARGETS[self.params.to].upper()})"

    def arrow_expr(self, column: str, values: pa.ChunkedArray) -> pa.Array:
        values = values.combine_chunks()
        if self.params.to == "int64" and arrow_kind(values.type) == "float":
            return arrow_float_to_int64(values)
        if self.params.to == "string":
            return string_form(values)
        return values.cast({"int64": pa.int64(), "float64": pa.float64()}[self.params.to])

    def describe(self, output: str) -> FeatureInfo:
        if self.params.to == "string":
            return super().describe(output)
        return FeatureInfo("continuous")


# ------------------------------------------------------------------- string lists


@dataclass
class TruncateListParams(ColumnsParams):
    sep: str = "\t"
    keep: int = 2
    join: str = "_"

    def validate(self) -> None:
        super().validate()
        if not self.sep:
            raise ValueError("sep must not be empty")
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1, got {self.keep}")


class TruncateList(Op):
    """Keep the first `keep` items of a delimited list, joined by `join` ("a\\tb\\tc" -> "a_b")."""

    op = "truncate_list"
    Params = TruncateListParams
    accepts = ("string",)

    def spark_sql(self, column: str) -> str:
        p = self.params
        parts = f"split({ident(column)}, {literal(_regex_literal(p.sep))}, -1)"
        return f"array_join(slice({parts}, 1, {int(p.keep)}), {literal(p.join)})"

    def arrow_expr(self, column: str, values: pa.ChunkedArray) -> pa.Array:
        p = self.params
        parts = pc.split_pattern(values.combine_chunks().cast(pa.string()), pattern=p.sep)
        return pc.binary_join(pc.list_slice(parts, 0, p.keep), p.join)


@dataclass
class ListLengthParams(ColumnsParams):
    sep: str = "\t"

    def validate(self) -> None:
        super().validate()
        if not self.sep:
            raise ValueError("sep must not be empty")


class ListLength(Op):
    """Number of items of a delimited list (separators + 1); missing or empty is 0."""

    op = "list_length"
    Params = ListLengthParams
    accepts = ("string",)
    default_suffix = "_len"

    def spark_sql(self, column: str) -> str:
        c, sep = ident(column), self.params.sep
        separators = f"(length({c}) - length(replace({c}, {literal(sep)}, ''))) DIV {len(sep)}"
        return f"CASE WHEN {sql_missing(column, True)} THEN 0L ELSE {separators} + 1L END"

    def arrow_expr(self, column: str, values: pa.ChunkedArray) -> pa.Array:
        values = values.combine_chunks().cast(pa.string())
        n = pc.add(pc.count_substring(values, self.params.sep).cast(pa.int64()), 1)
        return pa.array(np.where(is_missing(values), 0, as_numpy(n)), pa.int64())

    def describe(self, output: str) -> FeatureInfo:
        return FeatureInfo("continuous")


# --------------------------------------------------------------- fixed value maps


@dataclass
class MapParams(ColumnsParams):
    values: list[str] = field(default_factory=list)  # known values, indices 2, 3, ... in order

    def validate(self) -> None:
        super().validate()
        if not self.values or len(set(self.values)) != len(self.values):
            raise ValueError("values must list distinct known values")
        if "" in self.values:
            raise ValueError("values cannot hold the empty string (it means missing)")


class MapValues(Op):
    """A fixed dictionary (no fit): listed values -> 2, 3, ...; others 1; missing 0."""

    op = "map"
    Params = MapParams
    accepts = CATEGORICAL_INPUTS

    def spark_sql(self, column: str) -> str:
        values = [str(v) for v in self.params.values]
        return case_index_sql(column, self._is_string(column), values)

    def arrow_expr(self, column: str, values: pa.ChunkedArray) -> pa.Array:
        vocab = Vocabulary(pa.array([str(v) for v in self.params.values]), np.zeros(0))
        return pa.array(vocab.lookup(values), pa.int64())

    def describe(self, output: str) -> FeatureInfo:
        values = [str(v) for v in self.params.values]
        return FeatureInfo("categorical", size=len(values) + FIRST_KNOWN, stats={"values": values})


# ------------------------------------------------------------- category encoding


class Aggregated:
    """Operations fitted from grouped aggregates: category, count and target encoding, min-max.

    A step says what to aggregate (`agg_pieces`: per row, records `(key, values, t, x)`, one
    per element of the array `values`) and takes back, per (key, value), the row count, the
    sum and count of `t` and the min and max of `x` (`fit_aggregates`). A FeaturePipeline
    thus fits every such step of a batch with one Spark job (`aggregate`); a step fitted
    alone runs it by itself.
    Keys start with `<step name>/`.
    """

    def agg_pieces(self) -> list[Column]:
        raise NotImplementedError

    def min_count(self) -> int:
        """Groups with fewer rows are of no use to the step (they may be dropped in Spark)."""
        return 1

    def fit_aggregates(self, table: pa.Table) -> None:
        """Fitted state from this step's rows of the `aggregate` table."""
        raise NotImplementedError

    def _fit(self, df: DataFrame) -> None:
        self.fit_aggregates(aggregate(df, self.agg_pieces(), self.min_count()))


def agg_piece(key: str, values: Column, t: Column | None = None, x: Column | None = None):
    """One record struct(key, values, t, x): `values` is an array column of strings.

    `aggregate` explodes `values`, so a record stands for each element; elements that are
    missing (null or empty) are skipped and never enter a vocabulary. (Plain structs and
    `explode`, not higher-order functions: those run interpreted, element by element.)
    """
    from pyspark.sql import functions as F

    return F.struct(
        F.lit(key).alias("key"),
        values.cast("array<string>").alias("values"),
        (t if t is not None else F.lit(None)).cast("double").alias("t"),
        (x if x is not None else F.lit(None)).cast("double").alias("x"),
    )


def aggregate(df: DataFrame, pieces: list[Column], min_count: int) -> pa.Table:
    """(key, value, count, sum, t_count, min, max) over every record of `pieces`: one job."""
    from pyspark.sql import functions as F

    records = (
        df.select(F.explode(F.array(*pieces)).alias("r"))
        .select("r.key", F.explode("r.values").alias("value"), "r.t", "r.x")
        .where(F.col("value").isNotNull() & (F.col("value") != ""))
    )
    return (
        records.groupBy("key", "value")
        .agg(
            F.count(F.lit(1)).alias("count"),
            F.sum("t").alias("sum"),
            F.count("t").alias("t_count"),
            F.min("x").alias("min"),
            F.max("x").alias("max"),
        )
        .where(F.col("count") >= min_count)
        .toArrow()
    )


def rows_for(table: pa.Table, key: str) -> pa.Table:
    """Rows of one key in vocabulary order: count descending, then value (byte order)."""
    rows = table.filter(pc.equal(table["key"], key))
    order = pc.sort_indices(rows, [("count", "descending"), ("value", "ascending")])
    return rows.take(order)


@dataclass
class CategoryParams(ColumnsParams):
    min_freq: int = 1  # values seen fewer times in training are unknown (1)
    max_size: int | None = None  # keep at most this many known values (most frequent)
    shared: bool = False  # one vocabulary fitted on all the columns together
    # multi-valued: a string column split by `split`, or (split unset) a list column
    split: str | None = None  # multi-valued: items separated by this string
    max_len: int | None = None  # multi-valued: lists are truncated / 0-padded to this length

    def validate(self) -> None:
        super().validate()
        if self.min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {self.min_freq}")
        if self.max_size is not None and self.max_size < 1:
            raise ValueError(f"max_size must be >= 1 or null, got {self.max_size}")
        if self.split is not None and (not self.split or not self.max_len or self.max_len < 1):
            raise ValueError("a multi-valued column (split) needs a non-empty split, max_len >= 1")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")

    @property
    def multi(self) -> bool:
        """Multi-valued: split strings (`split`) or list columns (`max_len` alone)."""
        return self.max_len is not None


class CategoryEncode(Aggregated, Op):
    """Frequency-ordered vocabulary per column (or one shared), single or multi-valued."""

    op = "category"
    Params = CategoryParams
    accepts = CATEGORICAL_INPUTS
    stateful = True

    def __init__(self, name: str, params: CategoryParams) -> None:
        super().__init__(name, params)
        self.vocabs: dict[str, Vocabulary] = {}

    def allowed_kinds(self) -> tuple[str, ...]:
        if self.params.split is not None:
            return ("string",)
        return ("list",) if self.params.multi else CATEGORICAL_INPUTS

    def _check_kind(self, column: str, kind: str) -> None:
        # a list column read without max_len, or a string one with max_len alone, says how
        # to configure it rather than only naming the kinds
        p = self.params
        if kind == "list" and not p.multi:
            raise ColumnTypeError(
                f"step {self.name!r} (category): column {column!r} is a list; set max_len "
                "(lists are truncated / 0-padded to it) to encode it as a multi-valued feature"
            )
        if kind == "string" and p.multi and p.split is None:
            raise ColumnTypeError(
                f"step {self.name!r} (category): column {column!r} is a string and max_len is "
                "set without split; set split to the separator of its items, or declare the "
                "column list<string> in the dataset (parquet)"
            )
        super()._check_kind(column, kind)

    def vocab_key(self, column: str) -> str:
        return "shared" if self.params.shared else column

    def vocab_for(self, column: str) -> Vocabulary:
        return self.vocabs[self.vocab_key(column)]

    def _count_key(self, key: str) -> str:
        return f"{self.name}/{key}"

    def agg_pieces(self) -> list[Column]:
        from pyspark.sql import functions as F

        p = self.params
        pieces = []
        for column in self.columns:
            col = F.col(column)
            if p.split is not None:
                items = F.split(col, _regex_literal(p.split), -1)
            elif p.multi:
                items = col  # a list column (agg_piece casts its elements to strings)
            else:
                items = F.array(col.cast("string"))
            pieces.append(agg_piece(self._count_key(self.vocab_key(column)), items))
        return pieces

    def min_count(self) -> int:
        return self.params.min_freq

    def fit_aggregates(self, table: pa.Table) -> None:
        p = self.params
        self.vocabs = {}
        for key in dict.fromkeys(self.vocab_key(c) for c in self.columns):
            rows = rows_for(table, self._count_key(key))
            rows = rows.filter(pc.greater_equal(rows["count"], p.min_freq))
            if p.max_size is not None:
                rows = rows.slice(0, p.max_size)
            self.vocabs[key] = Vocabulary.from_counts(rows)

    def _transform(self, df: DataFrame) -> DataFrame:
        from pyspark.sql import functions as F

        p = self.params
        if p.multi:
            udfs = {
                o: _list_encoder(self.vocab_for(c), p.split, p.max_len)(F.col(c))
                for c, o in zip(self.columns, self.out, strict=True)
            }
            return df.withColumns(udfs)
        spark = df.sparkSession
        small = {}
        for column, out in zip(self.columns, self.out, strict=True):
            vocab = self.vocab_for(column)
            if len(vocab) <= CASE_MAX_VALUES:  # a few values: an expression, not a join
                values = vocab.values.to_pylist()
                small[out] = F.expr(case_index_sql(column, self._is_string(column), values))
                continue
            v_col, i_col = f"__{self.name}_{out}_value", f"__{self.name}_{out}_index"
            table = vocab.spark_frame(spark, v_col, i_col)
            if len(vocab) <= BROADCAST_MAX_VALUES:
                table = F.broadcast(table)
            df = df.join(table, F.col(column).cast("string") == F.col(v_col), "left")
            index = (
                f"CAST(CASE WHEN {sql_missing(column, self._is_string(column))} THEN {MISSING} "
                f"ELSE coalesce({ident(i_col)}, {UNKNOWN}) END AS BIGINT)"
            )
            df = df.withColumn(out, F.expr(index)).drop(v_col, i_col)
        return df.withColumns(small) if small else df

    def _transform_arrow(self, table: pa.Table) -> pa.Table:
        p = self.params
        for column, out in zip(self.columns, self.out, strict=True):
            vocab = self.vocab_for(column)
            if p.multi:
                values = vocab.lookup_lists(table[column], p.split, p.max_len)
            else:
                values = pa.array(vocab.lookup(table[column]), pa.int64())
            table = set_column(table, out, values)
        return table

    def state(self) -> dict[str, Any]:
        return {"vocabularies": {k: len(v) for k, v in self.vocabs.items()}}

    def artifacts(self) -> dict[str, Vocabulary]:
        return dict(self.vocabs)

    def load_state(self, state: dict[str, Any], artifacts: dict[str, Vocabulary]) -> None:
        expected = set(dict.fromkeys(self.vocab_key(c) for c in self.columns))
        if set(artifacts) != expected:
            raise FeatureError(
                f"step {self.name!r}: saved vocabularies {sorted(artifacts)} != {sorted(expected)}"
            )
        self.vocabs = dict(artifacts)
        super().load_state(state, artifacts)

    def describe(self, output: str) -> FeatureInfo:
        p = self.params
        column = self.lineage()[output][0]
        vocab = self.vocab_for(column)
        stats: dict[str, Any] = {"known_values": len(vocab), "min_freq": p.min_freq}
        if p.shared:
            stats["shared_with"] = self.out
        if p.multi:
            return FeatureInfo(
                "multi_categorical",
                size=vocab.size,
                max_len=p.max_len,
                stats={**stats, "split": p.split},
                vocabulary=self.vocab_key(column),
            )
        return FeatureInfo(
            "categorical", size=vocab.size, stats=stats, vocabulary=self.vocab_key(column)
        )


CASE_MAX_VALUES = 16
"""Vocabularies up to this size are applied by a CASE WHEN expression instead of a join."""

BROADCAST_MAX_VALUES = 2_000_000
"""Vocabularies up to this size are broadcast to every task for the join; bigger ones shuffle."""


def _list_encoder(vocab: Vocabulary, sep: str | None, max_len: int):
    """A Spark Arrow UDF running `Vocabulary.lookup_lists` (the same code serving runs)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    @F.arrow_udf(T.ArrayType(T.LongType(), containsNull=False))
    def encode(values: pa.Array) -> pa.Array:
        return vocab.lookup_lists(values, sep, max_len)

    return encode


# ----------------------------------------------------------------- hash and cross


@dataclass
class HashParams(ColumnsParams):
    buckets: int = 1000

    def validate(self) -> None:
        super().validate()
        check_buckets(self.buckets)


class HashEncode(Op):
    """`1 + pmod(xxhash64(value), buckets - 1)`; missing is 0 (see hashing.py)."""

    op = "hash"
    Params = HashParams
    accepts = CATEGORICAL_INPUTS

    def spark_sql(self, column: str) -> str:
        return hash_bucket_sql([column], [self._is_string(column)], self.params.buckets)

    def arrow_expr(self, column: str, values: pa.ChunkedArray) -> pa.Array:
        return pa.array(hash_bucket([values], self.params.buckets), pa.int64())

    def describe(self, output: str) -> FeatureInfo:
        b = self.params.buckets
        return FeatureInfo("hashed", size=b, stats={"buckets": b, "hash": HASH_NAME})


HASH_NAME = "xxhash64 seed 42 of the UTF-8 string form; index 1 + pmod(h, buckets - 1)"


@dataclass
class CrossParams:
    columns: list[str] = field(default_factory=list)
    buckets: int = 1000
    out: str | None = None  # default: the column names joined by "_"

    def validate(self) -> None:
        if len(self.columns) < 2 or len(set(self.columns)) != len(self.columns):
            raise ValueError("a cross needs at least two distinct columns")
        check_buckets(self.buckets)


class Cross(Op):
    """Hash of several columns together (chained xxhash64) into `buckets`; any missing -> 0."""

    op = "cross"
    Params = CrossParams
    accepts = CATEGORICAL_INPUTS

    @property
    def out(self) -> list[str]:
        return [self.params.out or "_".join(self.columns)]

    def lineage(self) -> dict[str, list[str]]:
        return {self.out[0]: self.columns}

    def _transform(self, df: DataFrame) -> DataFrame:
        from pyspark.sql import functions as F

        flags = [self._is_string(c) for c in self.columns]
        sql = hash_bucket_sql(self.columns, flags, self.params.buckets)
        return df.withColumn(self.out[0], F.expr(sql))

    def _transform_arrow(self, table: pa.Table) -> pa.Table:
        index = hash_bucket([table[c] for c in self.columns], self.params.buckets)
        return set_column(table, self.out[0], pa.array(index, pa.int64()))

    def describe(self, output: str) -> FeatureInfo:
        b = self.params.buckets
        return FeatureInfo(
            "cross", size=b, stats={"buckets": b, "columns": self.columns, "hash": HASH_NAME}
        )


# ---------------------------------------------------------------- numeric columns


@dataclass
class MinMaxParams(ColumnsParams):
    clip: bool = True  # clip values outside the training range to [0, 1]


class MinMaxScale(Aggregated, Op):
    """`(x - min) / (max - min)` with the training min and max; missing is 0.0."""

    op = "minmax"
    Params = MinMaxParams
    accepts = NUMERIC_INPUTS
    stateful = True

    def __init__(self, name: str, params: MinMaxParams) -> None:
        super().__init__(name, params)
        self.stats: dict[str, dict[str, float]] = {}

    def agg_pieces(self) -> list[Column]:
        from pyspark.sql import functions as F

        pieces = []
        for c in self.columns:
            x = F.col(c).cast("double")
            x = F.when(F.isnan(x), F.lit(None)).otherwise(x)  # NaN is missing, not the max
            pieces.append(agg_piece(f"{self.name}/{c}", F.array(F.lit("all")), x=x))
        return pieces

    def fit_aggregates(self, table: pa.Table) -> None:
        self.stats = {}
        for c in self.columns:
            rows = rows_for(table, f"{self.name}/{c}").to_pylist()
            lo, hi = (rows[0]["min"], rows[0]["max"]) if rows else (None, None)
            if lo is None or hi is None:
                raise FeatureError(f"step {self.name!r} (minmax): column {c!r} has no values")
            self.stats[c] = {"min": float(lo), "max": float(hi)}

    def spark_sql(self, column: str) -> str:
        lo, hi = self.stats[column]["min"], self.stats[column]["max"]
        x = f"CAST({ident(column)} AS DOUBLE)"
        scaled = f"(({x} - {literal(lo)}) / {literal(hi - lo)})" if hi > lo else "0.0D"
        if self.params.clip:
            scaled = f"least(greatest({scaled}, 0.0D), 1.0D)"
        return f"CASE WHEN {x} IS NULL OR isnan({x}) THEN 0.0D ELSE {scaled} END"

    def arrow_expr(self, column: str, values: pa.ChunkedArray) -> pa.Array:
        lo, hi = self.stats[column]["min"], self.stats[column]["max"]
        x = values.combine_chunks().cast(pa.float64())
        missing = pc.or_(x.is_null(), pc.is_nan(x).fill_null(True)).to_numpy(zero_copy_only=False)
        x = as_numpy(x, 0.0)
        scaled = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
        if self.params.clip:
            scaled = np.minimum(np.maximum(scaled, 0.0), 1.0)
        return pa.array(np.where(missing, 0.0, scaled), pa.float64())

    def state(self) -> dict[str, Any]:
        return {"stats": self.stats}

    def load_state(self, state: dict[str, Any], artifacts: dict[str, Vocabulary]) -> None:
        self.stats = {c: {k: float(v) for k, v in s.items()} for c, s in state["stats"].items()}
        super().load_state(state, artifacts)

    def describe(self, output: str) -> FeatureInfo:
        column = self.lineage()[output][0]
        return FeatureInfo("continuous", stats={**self.stats[column], "clip": self.params.clip})


class LogTransform(Op):
    """`log1p(max(x, 0))`; missing is 0.0.

    Spark runs it as an Arrow UDF with the numpy code below: a transcendental function in
    Java and in numpy can differ in the last bit, and offline and online must agree exactly.
    """

    op = "log"
    Params = ColumnsParams
    accepts = NUMERIC_INPUTS

    def spark_expr(self, column: str) -> Column:
        from pyspark.sql import functions as F

        return _log_udf()(F.col(column).cast("double"))

    def arrow_expr(self, column: str, values: pa.ChunkedArray) -> pa.Array:
        return log1p_clipped(values.combine_chunks().cast(pa.float64()))

    def describe(self, output: str) -> FeatureInfo:
        return FeatureInfo("continuous", stats={"transform": "log1p(max(x, 0))"})


def log1p_clipped(values: pa.Array) -> pa.Array:
    x = values.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN
    with np.errstate(invalid="ignore"):
        y = np.log1p(np.maximum(x, 0.0))
    return pa.array(np.where(np.isnan(x), 0.0, y), pa.float64())


def _log_udf():
    from pyspark.sql import functions as F

    @F.arrow_udf("double")
    def log1p_udf(values: pa.Array) -> pa.Array:
        return log1p_clipped(values)

    return log1p_udf


@dataclass
class BinsParams(ColumnsParams):
    edges: list[float] = field(default_factory=list)

    def validate(self) -> None:
        super().validate()
        if not self.edges or any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"edges must be strictly increasing, got {self.edges}")


class Bins(Op):
    """Cut into bins: missing 0; x < edges[0] -> 1; edges[i-1] <= x < edges[i] -> i + 1; ..."""

    op = "bins"
    Params = BinsParams
    accepts = NUMERIC_INPUTS

    def spark_sql(self, column: str) -> str:
        x = f"CAST({ident(column)} AS DOUBLE)"
        steps = " + ".join(f"CAST({x} >= {literal(float(e))} AS BIGINT)" for e in self.params.edges)
        return f"CASE WHEN {x} IS NULL THEN {MISSING}L ELSE 1L + {steps} END"

    def arrow_expr(self, column: str, values: pa.ChunkedArray) -> pa.Array:
        x = values.combine_chunks().cast(pa.float64())
        edges = np.asarray(self.params.edges, dtype=np.float64)
        index = np.searchsorted(edges, as_numpy(x, 0.0), side="right") + 1
        return pa.array(np.where(x.is_null().to_numpy(zero_copy_only=False), 0, index), pa.int64())

    def describe(self, output: str) -> FeatureInfo:
        edges = [float(e) for e in self.params.edges]
        return FeatureInfo("categorical", size=len(edges) + 2, stats={"edges": edges})


# ------------------------------------------------------------ count and target


class _ValueTable:
    """A value -> row lookup built from a Vocabulary (shared by count and target encoding)."""

    @staticmethod
    def positions(vocab: Vocabulary, values: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """Row of each value in `vocab`, -1 for unknown or missing."""
        index = vocab.lookup(values)
        return np.where(index >= FIRST_KNOWN, index - FIRST_KNOWN, -1)


class CountEncode(Aggregated, Op):
    """Number of training rows with the same value; unknown and missing are 0."""

    op = "count"
    Params = ColumnsParams
    accepts = CATEGORICAL_INPUTS
    stateful = True
    default_suffix = "_count"

    def __init__(self, name: str, params: ColumnsParams) -> None:
        super().__init__(name, params)
        self.vocabs: dict[str, Vocabulary] = {}

    def agg_pieces(self) -> list[Column]:
        from pyspark.sql import functions as F

        return [
            agg_piece(f"{self.name}/{c}", F.array(F.col(c).cast("string"))) for c in self.columns
        ]

    def fit_aggregates(self, table: pa.Table) -> None:
        self.vocabs = {
            c: Vocabulary.from_counts(rows_for(table, f"{self.name}/{c}")) for c in self.columns
        }

    def _transform(self, df: DataFrame) -> DataFrame:
        from pyspark.sql import functions as F

        spark = df.sparkSession
        for column, out in zip(self.columns, self.out, strict=True):
            vocab = self.vocabs[column]
            v_col, c_col = f"__{self.name}_{out}_value", f"__{self.name}_{out}_count"
            table = spark.createDataFrame(
                pa.table({v_col: vocab.values, c_col: pa.array(vocab.counts, pa.int64())})
            )
            if len(vocab) <= BROADCAST_MAX_VALUES:
                table = F.broadcast(table)
            df = df.join(table, F.col(column).cast("string") == F.col(v_col), "left")
            value = (
                f"CAST(CASE WHEN {sql_missing(column, self._is_string(column))} THEN 0 "
                f"ELSE coalesce({ident(c_col)}, 0) END AS DOUBLE)"
            )
            df = df.withColumn(out, F.expr(value)).drop(v_col, c_col)
        return df

    def arrow_expr(self, column: str, values: pa.ChunkedArray) -> pa.Array:
        vocab = self.vocabs[column]
        pos = _ValueTable.positions(vocab, values)
        counts = np.where(pos >= 0, vocab.counts[np.maximum(pos, 0)] if len(vocab) else 0, 0)
        return pa.array(counts.astype(np.float64), pa.float64())

    def artifacts(self) -> dict[str, Vocabulary]:
        return dict(self.vocabs)

    def load_state(self, state: dict[str, Any], artifacts: dict[str, Vocabulary]) -> None:
        self.vocabs = {c: artifacts[c] for c in self.columns}
        super().load_state(state, artifacts)

    def describe(self, output: str) -> FeatureInfo:
        return FeatureInfo("continuous", stats={"encoding": "training count"})


@dataclass
class TargetParams(ColumnsParams):
    target: str = "label"  # the column to average (a label in 0/1 or any number)
    folds: int = 5  # out-of-fold means for training rows
    smoothing: float = 20.0  # weight of the prior: (sum + prior * m) / (count + m)
    seed: int = 0  # decides the fold of each training row

    def validate(self) -> None:
        super().validate()
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        if self.smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {self.smoothing}")
        if self.target in self.columns:
            raise ValueError("the target cannot be one of the encoded columns")


class TargetEncode(Aggregated, Op):
    """Smoothed mean of `target` per value: `(sum + prior * m) / (count + m)`.

    Training rows get out-of-fold means (their own fold's rows left out), so a row's label
    never feeds its own feature. Rows are assigned to folds by a seeded hash of the whole
    row, which does not depend on how Spark partitions the data. Unknown and missing values
    get the prior (the training mean of `target`).
    """

    op = "target"
    Params = TargetParams
    stateful = True
    default_suffix = "_te"

    def __init__(self, name: str, params: TargetParams) -> None:
        super().__init__(name, params)
        self.prior = 0.0
        self.tables: dict[str, Vocabulary] = {}  # value -> count, in vocabulary order
        self.sums: dict[str, np.ndarray] = {}

    def inputs(self) -> list[str]:
        return [*self.columns, self.params.target]

    def _check_kind(self, column: str, kind: str) -> None:
        allowed = ("integer", "float", "bool") if column == self.params.target else self.accepts
        if kind not in (*allowed, "null"):
            raise ColumnTypeError(
                f"step {self.name!r} (target): column {column!r} is {kind}, "
                f"expected {' or '.join(allowed)}"
            )

    def _target(self):
        from pyspark.sql import functions as F

        return F.col(self.params.target).cast("double")

    def _value(self, column: str):
        from pyspark.sql import functions as F

        col = F.col(column)
        return F.when(spark_is_missing(col, self._is_string(column)), F.lit(None)).otherwise(
            col.cast("string")
        )

    def agg_pieces(self) -> list[Column]:
        from pyspark.sql import functions as F

        t = self._target()
        prior = agg_piece(f"{self.name}/prior", F.array(F.lit("all")), t=t)
        return [prior] + [
            agg_piece(f"{self.name}/{c}", F.array(self._value(c)), t=t) for c in self.columns
        ]

    def fit_aggregates(self, table: pa.Table) -> None:
        prior = rows_for(table, f"{self.name}/prior").to_pylist()
        if not prior or not prior[0]["t_count"]:
            raise FeatureError(f"step {self.name!r} (target): no training rows with a target")
        self.prior = float(prior[0]["sum"]) / float(prior[0]["t_count"])
        for column in self.columns:
            stats = rows_for(table, f"{self.name}/{column}")
            self.tables[column] = Vocabulary.from_counts(stats.select(["value", "count"]))
            self.sums[column] = stats["sum"].fill_null(0.0).to_numpy().astype(np.float64)

    def _encode(self, s, c):
        """Smoothed mean from a sum and a count (Spark columns or numpy arrays alike)."""
        m = self.params.smoothing
        return (s + self.prior * m) / (c + m)

    train_specific = True

    def transform_train(self, df: DataFrame) -> DataFrame:
        """Training rows: out-of-fold means."""
        from pyspark.sql import functions as F

        self._require_fitted()
        self.check_spark(df)
        p = self.params
        fold = F.pmod(F.xxhash64(F.lit(p.seed), *[F.col(c) for c in df.columns]), F.lit(p.folds))
        fold_col = f"__{self.name}_fold"
        df = df.withColumn(fold_col, fold)
        for column, out in zip(self.columns, self.out, strict=True):
            v, t = f"__{self.name}_{out}_v", f"__{self.name}_{out}_t"
            per_fold = (
                df.select(self._value(column).alias(v), F.col(fold_col), self._target().alias(t))
                .where(F.col(v).isNotNull())
                .groupBy(v, fold_col)
                .agg(F.count(F.lit(1)).alias("fc"), F.sum(t).alias("fs"))
            )
            totals = per_fold.groupBy(v).agg(F.sum("fc").alias("tc"), F.sum("fs").alias("ts"))
            oof = per_fold.join(totals, v).select(
                F.col(v),
                F.col(fold_col),
                self._encode(F.col("ts") - F.col("fs"), F.col("tc") - F.col("fc")).alias(out),
            )
            df = (
                df.withColumn(v, self._value(column))
                .drop(out)
                .join(oof, [v, fold_col], "left")
                .withColumn(out, F.coalesce(F.col(out), F.lit(self.prior)))
                .drop(v)
            )
        return df.drop(fold_col)

    def _transform(self, df: DataFrame) -> DataFrame:
        from pyspark.sql import functions as F

        spark = df.sparkSession
        for column, out in zip(self.columns, self.out, strict=True):
            table = self.tables[column]
            v_col, e_col = f"__{self.name}_{out}_value", f"__{self.name}_{out}_enc"
            enc = self._encode(self.sums[column], table.counts.astype(np.float64))
            lookup = spark.createDataFrame(pa.table({v_col: table.values, e_col: pa.array(enc)}))
            if len(table) <= BROADCAST_MAX_VALUES:
                lookup = F.broadcast(lookup)
            df = (
                df.join(lookup, self._value(column) == F.col(v_col), "left")
                .withColumn(out, F.coalesce(F.col(e_col), F.lit(self.prior)))
                .drop(v_col, e_col)
            )
        return df

    def arrow_expr(self, column: str, values: pa.ChunkedArray) -> pa.Array:
        table = self.tables[column]
        pos = _ValueTable.positions(table, values)
        enc = self._encode(self.sums[column], table.counts.astype(np.float64))
        out = np.where(pos >= 0, enc[np.maximum(pos, 0)] if len(table) else 0.0, self.prior)
        return pa.array(out.astype(np.float64), pa.float64())

    def _transform_arrow(self, table: pa.Table) -> pa.Table:
        for column, out in zip(self.columns, self.out, strict=True):
            table = set_column(table, out, self.arrow_expr(column, table[column]))
        return table

    def state(self) -> dict[str, Any]:
        return {
            "prior": self.prior,
            "sums": {c: [float(x) for x in s] for c, s in self.sums.items()},
        }

    def artifacts(self) -> dict[str, Vocabulary]:
        return dict(self.tables)

    def load_state(self, state: dict[str, Any], artifacts: dict[str, Vocabulary]) -> None:
        self.prior = float(state["prior"])
        self.tables = {c: artifacts[c] for c in self.columns}
        self.sums = {c: np.asarray(state["sums"][c], dtype=np.float64) for c in self.columns}
        super().load_state(state, artifacts)

    def describe(self, output: str) -> FeatureInfo:
        p = self.params
        return FeatureInfo(
            "continuous",
            stats={"prior": self.prior, "smoothing": p.smoothing, "folds": p.folds},
        )


# ------------------------------------------------------------------------ labels


@dataclass
class LabelParams:
    columns: list[str] = field(default_factory=list)
    out: str = "label"
    threshold: float = 0.0  # a value above it is a positive

    def validate(self) -> None:
        if not self.columns:
            raise ValueError("columns must list at least one column")


class Label(Op):
    """1.0 if any of the columns is present and > threshold (0: an engagement happened)."""

    op = "label"
    Params = LabelParams
    accepts = ("integer", "float", "bool")

    @property
    def out(self) -> list[str]:
        return [self.params.out]

    def lineage(self) -> dict[str, list[str]]:
        return {self.params.out: self.columns}

    def optional_online(self) -> bool:
        return True

    def _transform(self, df: DataFrame) -> DataFrame:
        from pyspark.sql import functions as F

        t = literal(float(self.params.threshold))
        hits = " OR ".join(
            f"coalesce(CAST({ident(c)} AS DOUBLE) > {t}, false)" for c in self.columns
        )
        return df.withColumn(self.params.out, F.expr(f"CAST(({hits}) AS DOUBLE)"))

    def _transform_arrow(self, table: pa.Table) -> pa.Table:
        hit = np.zeros(table.num_rows, dtype=bool)
        for c in self.columns:
            x = table[c].combine_chunks().cast(pa.float64())
            hit |= as_numpy(pc.greater(x, float(self.params.threshold)), False).astype(bool)
        return set_column(table, self.params.out, pa.array(hit.astype(np.float64)))

    def describe(self, output: str) -> FeatureInfo:
        rule = f"1 if any source > {self.params.threshold:g} else 0"
        return FeatureInfo("label", stats={"rule": rule})


# ---------------------------------------------------------------------- registry

OPS: dict[str, type[Op]] = {
    cls.op: cls
    for cls in (
        Fill,
        Cast,
        TruncateList,
        ListLength,
        MapValues,
        CategoryEncode,
        HashEncode,
        Cross,
        MinMaxScale,
        LogTransform,
        Bins,
        CountEncode,
        TargetEncode,
        Label,
    )
}
"""Every operation by its config name (`op: <name>`); sampling.py adds negative_sample and
history.py user_history."""


def register(cls: type[Op]) -> type[Op]:
    OPS[cls.op] = cls
    return cls


def build_op(name: str, config: dict[str, Any]) -> Op:
    """An operation from its config entry `{op: <name>, <params>...}`; errors name the step."""
    import recsys.features.history  # registers user_history (it imports this module)
    import recsys.features.sampling  # noqa: F401  (registers negative_sample; imports this module)

    config = dict(config)
    kind = config.pop("op", None)
    if kind not in OPS:
        raise FeatureError(f"step {name!r}: op {kind!r} is not one of {', '.join(sorted(OPS))}")
    cls = OPS[kind]
    known = {f.name for f in dataclasses.fields(cls.Params)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise FeatureError(
            f"step {name!r} ({kind}): unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    params = cls.Params(**config)
    try:
        params.validate()
    except (ValueError, TypeError) as e:
        raise FeatureError(f"step {name!r} ({kind}): {e}") from e
    return cls(name, params)


def op_config(op: Op) -> dict[str, Any]:
    """The config entry that `build_op` turns back into `op` (saved in pipeline.json)."""
    return {"op": op.op, **dataclasses.asdict(op.params)}
