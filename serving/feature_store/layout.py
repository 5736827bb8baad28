"""Fixed-width records of encoded features: one numpy structured dtype per snapshot table.

Both feature stores hold a table's rows as these records (memory: one numpy array; Redis: one
value of `dtype.itemsize` bytes per id), so a lookup is a vectorised gather or one
`np.frombuffer` and the two stores return byte-identical rows. Field types follow the
FeatureSpec batch contract (recsys/export/tensors.py): index features int64, continuous
float32, multi-categorical int64 lists padded with 0 (or cut) to the feature's max_len.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from recsys.errors import RecsysError
from recsys.export.reader import FeatureSnapshot
from recsys.features.feature_spec import Feature
from recsys.train.data import _padded_lists

SNAPSHOTS = ("ranker", "retrieval")
ENTITIES = ("user", "item")


class FeatureStoreError(RecsysError, RuntimeError):
    """A store that cannot serve (Redis unreachable, a bundle not loaded into it...)."""


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # int64 | float32 | list
    width: int = 1  # list: max_len


@dataclass(frozen=True)
class TableLayout:
    """The record layout of one (snapshot, entity) table."""

    snapshot: str
    entity: str
    columns: tuple[Column, ...]

    @property
    def dtype(self) -> np.dtype:
        fields: list[tuple[Any, ...]] = []
        for c in self.columns:
            if c.kind == "list":
                fields.append((c.name, "<i8", (c.width,)))
            else:
                fields.append((c.name, "<i8" if c.kind == "int64" else "<f4"))
        return np.dtype(fields)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "entity": self.entity,
            "columns": [[c.name, c.kind, c.width] for c in self.columns],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableLayout:
        columns = tuple(Column(str(n), str(k), int(w)) for n, k, w in data["columns"])
        return cls(str(data["snapshot"]), str(data["entity"]), columns)

    def encode(self, table: pa.Table) -> np.ndarray:
        """Records of every row of `table` (columns as the snapshot stores them)."""
        records = np.zeros(table.num_rows, self.dtype)
        for c in self.columns:
            column = table[c.name]
            if c.kind == "list":
                records[c.name] = _padded_lists(column, c.width, self.where, c.name)
            elif c.kind == "int64":
                records[c.name] = column.to_numpy().astype(np.int64, copy=False)
            else:
                values = column.to_numpy(zero_copy_only=False)
                records[c.name] = values.astype(np.float32, copy=False)
        return records

    @property
    def where(self) -> str:
        return f"{self.snapshot}/{self.entity}s"

    def tensor(self, records: np.ndarray, name: str) -> Tensor:
        """One feature of `records` as the model's input tensor (B, or B x max_len)."""
        return torch.from_numpy(np.array(records[name], copy=True))  # fields are strided views


def layout_of(snapshot: str, entity: str, snap: FeatureSnapshot) -> TableLayout:
    """The layout of a bundle snapshot's user or item table: every spec feature it holds."""
    table = snap.users if entity == "user" else snap.items
    columns = []
    for feature in snap.spec.features:
        if feature.name not in table.column_names:
            continue
        columns.append(_column(feature, table.schema.field(feature.name).type))
    return TableLayout(snapshot, entity, tuple(columns))


def _column(feature: Feature, arrow_type: pa.DataType) -> Column:
    if feature.kind == "multi_categorical":
        return Column(feature.name, "list", int(feature.max_len or 1))
    if feature.is_index:
        return Column(feature.name, "int64")
    if pa.types.is_list(arrow_type):
        raise FeatureStoreError(f"feature {feature.name!r} is a list but not multi_categorical")
    return Column(feature.name, "float32")


def raw_ids(snap: FeatureSnapshot, entity: str) -> list[str]:
    """Raw ids of a snapshot table, row order (the `<id feature>_raw` column)."""
    key = snap.spec.user_id if entity == "user" else snap.spec.item_id
    table = snap.users if entity == "user" else snap.items
    column = f"{key}_raw"
    if key is None or column not in table.column_names:
        if table.num_rows == 0:
            return []
        raise FeatureStoreError(f"the {entity} table has no raw id column {column!r}")
    return [str(v) for v in table[column].to_pylist()]
