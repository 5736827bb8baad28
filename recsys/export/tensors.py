"""Arrow tables of encoded features -> model input tensors (the FeatureSpec batch contract)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
from torch import Tensor

from recsys.errors import RecsysError
from recsys.features.feature_spec import Feature, FeatureSpec
from recsys.train.data import DataError, to_tensor


def features_of(spec: FeatureSpec, inputs: tuple[str, ...]) -> list[Feature]:
    """Features that any of `inputs` (wide, deep, user_tower, item_tower) reads, spec order."""
    return [f for f in spec.features if set(f.inputs) & set(inputs)]


def to_tensors(table: pa.Table, features: list[Feature], where: str = "table") -> dict[str, Tensor]:
    """{name: tensor} for `features` from `table` (int64 B, int64 B x max_len, float32 B),
    exactly as the training loader builds batches."""
    missing = [f.name for f in features if f.name not in table.column_names]
    if missing:
        raise DataError(f"{where}: missing columns {missing}")
    return {f.name: to_tensor(f, table[f.name], where) for f in features}


def read_table(directory: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All parquet files of `directory` (or one file) as one table."""
    try:
        return ds.dataset(str(directory), format="parquet").to_table(columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise RecsysError(f"cannot read parquet under {directory}: {e}") from e
