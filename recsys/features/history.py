"""The user's history: each row gets the items its user engaged with in the training rows.

A step (`op: user_history`) fitted on training rows only: for every user (the encoded
`user` column) it keeps the encoded `item` values of its positive rows (label > 0.5, or
every row when `label` is null), the latest `max_len` first by the `time` column (by row
order when `time` is null). With `distinct` (the default) a value is listed once, at its
latest row; without, once per row, so that mean pooling weighs a value by how often it
occurs. `item` may be the item id or any encoded item column (the author, ...). The step
writes them to `out` as a multi-valued index feature (list<int64>, 0-padded to `max_len`)
whose indices are the item column's: a two-tower model pools them from the item tower's
table of that column (`share_history_embedding`). Every row of a user, in every split, gets
that same train history; a user without training positives gets an empty list.

Because the history is the same on all of a user's rows, the user feature table that
preprocessing writes for serving (the user's latest row) carries it, so export, evaluation
and the server read it like any other user feature. In training the row's own item is in
its history: the two-tower training wrapper hides it (see `TwoTowerTrain`), so the model
learns which items go with the user's other items, not that an item goes with itself (for
another column, one occurrence of the row's own value: the one the row itself added).

The fitted histories are plain data (`state()`: users, lengths and the items in one flat
list), like the per-value sums of target encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from recsys.features.columns import FeatureError, require_columns
from recsys.features.ops import FeatureInfo, Op, register, set_column
from recsys.features.vocabulary import FIRST_KNOWN, Vocabulary

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

HISTORY_STAT = "history_of"
"""The spec stats key naming the item feature whose indices a history holds (two_tower.py)."""


@dataclass
class UserHistoryParams:
    user: str = "user_id"  # the encoded user column (after its category step)
    item: str = "item_id"  # the encoded item column (after its category step)
    label: str | None = "label"  # positives have label > 0.5; null: every row is one
    time: str | None = None  # latest first by this column; null: by row order
    max_len: int = 20  # items kept per user (the latest), lists 0-padded to this length
    distinct: bool = True  # each value once (at its latest row); false: once per row
    out: str = "user_history"

    def validate(self) -> None:
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")
        if self.user == self.item:
            raise ValueError("user and item must be different columns")
        if not self.out or self.out in (self.user, self.item):
            raise ValueError(f"out must be a new column name, got {self.out!r}")


@register
class UserHistory(Op):
    """Each row's user's positive training items (encoded ids), latest first."""

    op = "user_history"
    Params = UserHistoryParams
    accepts = ("integer",)
    stateful = True

    def __init__(self, name: str, params: UserHistoryParams) -> None:
        super().__init__(name, params)
        self.size = FIRST_KNOWN
        self.users = np.zeros(0, np.int64)  # sorted encoded user ids
        self.offsets = np.zeros(1, np.int64)  # user k's items: items[offsets[k]:offsets[k+1]]
        self.items = np.zeros(0, np.int64)

    @property
    def columns(self) -> list[str]:
        return [self.params.user]

    @property
    def out(self) -> list[str]:
        return [self.params.out]

    def inputs(self) -> list[str]:
        p = self.params
        return [p.user, p.item, *(c for c in (p.label, p.time) if c is not None)]

    def lineage(self) -> dict[str, list[str]]:
        return {self.params.out: [self.params.user, self.params.item]}

    def optional_online(self) -> bool:
        # serving reads the history from the user table; a request has no training rows
        return True

    def _check_kind(self, column: str, kind: str) -> None:
        p = self.params
        if column in (p.user, p.item):
            super()._check_kind(column, kind)
        elif kind not in ("integer", "float", "bool", "null"):
            raise FeatureError(
                f"step {self.name!r} (user_history): column {column!r} is {kind}, expected a "
                "number (label or time)"
            )

    # -------------------------------------------------------------------- fit

    def _fit(self, df: DataFrame) -> None:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        p = self.params
        size = df.agg(F.max(p.item)).first()[0]
        order = F.col(p.time) if p.time is not None else F.monotonically_increasing_id()
        rows = df.where(F.col(p.label) > 0.5) if p.label is not None else df
        rows = rows.where((F.col(p.user) >= FIRST_KNOWN) & (F.col(p.item) >= FIRST_KNOWN))
        latest = rows.select(p.user, p.item, order.cast("double").alias("__t"))
        if p.distinct:
            latest = latest.groupBy(p.user, p.item).agg(F.max("__t").alias("__t"))
        ranked = Window.partitionBy(p.user).orderBy(F.desc("__t"), F.desc(p.item))
        table = (
            latest.withColumn("__rank", F.row_number().over(ranked))
            .where(F.col("__rank") <= p.max_len)
            .select(p.user, p.item, "__rank")
            .toArrow()
        )
        self._set(table, int(size) + 1 if size is not None else FIRST_KNOWN)

    def _set(self, table: pa.Table, size: int) -> None:
        """The histories from (user, item, rank) rows: rank 1 is the latest item."""
        p = self.params
        users = table[p.user].to_numpy().astype(np.int64)
        items = table[p.item].to_numpy().astype(np.int64)
        rank = table["__rank"].to_numpy().astype(np.int64)
        order = np.lexsort((rank, users))  # by user, then latest first
        users, items = users[order], items[order]
        self.users, starts = np.unique(users, return_index=True)
        self.offsets = np.append(starts, len(users)).astype(np.int64)
        self.items = items
        self.size = max(size, FIRST_KNOWN)

    # -------------------------------------------------------------- transform

    def _padded(self, users: np.ndarray) -> np.ndarray:
        """N x max_len histories of encoded `users` (0-padded; unknown users all 0)."""
        n, max_len = len(users), self.params.max_len
        out = np.zeros((n, max_len), np.int64)
        if not len(self.users) or not n:
            return out
        pos = np.clip(np.searchsorted(self.users, users), 0, len(self.users) - 1)
        found = self.users[pos] == users
        starts = np.where(found, self.offsets[pos], 0)
        lengths = np.where(found, self.offsets[pos + 1] - self.offsets[pos], 0)
        lengths = np.minimum(lengths, max_len)  # the latest max_len
        row = np.repeat(np.arange(n), lengths)
        col = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[row, col] = self.items[np.repeat(starts, lengths) + col]
        return out

    def _list_array(self, users: np.ndarray) -> pa.Array:
        max_len = self.params.max_len
        flat = self._padded(users).reshape(-1)
        offsets = pa.array(np.arange(0, len(flat) + 1, max_len, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(flat, pa.int64()))

    def transform(self, df: DataFrame) -> DataFrame:
        from pyspark.sql import functions as F

        self._require_fitted()
        p = self.params
        require_columns(df.columns, [p.user], f"step {self.name!r} (user_history) on data")
        key, value = f"__{self.name}_user", f"__{self.name}_items"
        known = pa.table(
            {key: pa.array(self.users, pa.int64()), value: self._list_array(self.users)}
        )
        empty = F.array_repeat(F.lit(0).cast("bigint"), p.max_len)
        if not len(self.users):
            return df.withColumn(p.out, empty)
        table = F.broadcast(df.sparkSession.createDataFrame(known))
        joined = df.join(table, F.col(p.user) == F.col(key), "left")
        return joined.withColumn(p.out, F.coalesce(F.col(value), empty)).drop(key, value)

    def transform_arrow(self, table: pa.Table) -> pa.Table:
        self._require_fitted()
        p = self.params
        require_columns(table.column_names, [p.user], f"step {self.name!r} (user_history)")
        users = table[p.user].combine_chunks().cast(pa.int64()).fill_null(0).to_numpy()
        return set_column(table, p.out, self._list_array(np.asarray(users, np.int64)))

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        return {
            "size": int(self.size),
            "users": self.users.tolist(),
            "lengths": np.diff(self.offsets).tolist(),
            "items": self.items.tolist(),
        }

    def load_state(self, state: dict[str, Any], artifacts: dict[str, Vocabulary]) -> None:
        try:
            users = np.asarray(state["users"], np.int64)
            lengths = np.asarray(state["lengths"], np.int64)
            items = np.asarray(state["items"], np.int64)
            size = int(state["size"])
        except (KeyError, TypeError, ValueError) as e:
            raise FeatureError(f"step {self.name!r} (user_history): bad saved state: {e}") from e
        if len(users) != len(lengths) or lengths.sum() != len(items):
            raise FeatureError(
                f"step {self.name!r} (user_history): saved users, lengths and items disagree"
            )
        self.users, self.items, self.size = users, items, size
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        super().load_state(state, artifacts)

    def describe(self, output: str) -> FeatureInfo:
        p = self.params
        lengths = np.diff(self.offsets)
        stats = {
            HISTORY_STAT: p.item,
            "users": len(self.users),
            "mean_length": round(float(lengths.mean()), 3) if len(lengths) else 0.0,
            "order": p.time or "row order",
            "distinct": p.distinct,
        }
        return FeatureInfo("multi_categorical", size=self.size, max_len=p.max_len, stats=stats)
