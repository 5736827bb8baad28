"""Processed parquet -> per-worker tensor shards -> seeded batches, with no per-row Python.

Each worker reads only the row groups that overlap its shard (contiguous, equal-sized row
ranges of the split; the remainder rows past `world_size * (n // world_size)` are left out so
every worker runs the same number of steps, as DDP needs). A shard lives in memory as one
tensor per feature; a batch is an `index_select` of every tensor with a slice of a seeded
permutation. Ray Data would stream instead; at the sizes this project trains on (millions of
rows, tens of columns) a worker's shard fits in memory many times over and slicing tensors is
the fastest loader there is (see experiments/bench/bench_train.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import torch
from torch import Tensor

from recsys.errors import RecsysError
from recsys.features.feature_spec import Feature, FeatureSpec

Batch = dict[str, Tensor]


class DataError(RecsysError, ValueError):
    """Processed data that does not match its FeatureSpec; names the split and column."""


def used_features(spec: FeatureSpec) -> list[Feature]:
    """Features a model reads (any model input), the label, and the user and item ids."""
    keep = {f.name for f in spec.features if f.inputs}
    keep |= {name for name in (spec.label, spec.user_id, spec.item_id) if name}
    return [f for f in spec.features if f.name in keep]


@dataclass
class Shard:
    """One worker's rows of one split: a tensor per feature, all with the same first dim."""

    tensors: dict[str, Tensor]
    num_rows: int
    total_rows: int  # rows in the whole split


def _row_group_fragments(split_dir: Path) -> list[tuple[ds.ParquetFileFragment, int]]:
    try:
        dataset = ds.dataset(split_dir, format="parquet")
        fragments = []
        for fragment in dataset.get_fragments():
            for piece in fragment.split_by_row_group():
                fragments.append((piece, piece.row_groups[0].num_rows))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"cannot read parquet under {split_dir}: {e}") from e
    return fragments


def to_tensor(feature: Feature, column: pa.ChunkedArray, where: str) -> Tensor:
    """One encoded feature column as its model input tensor (int64 B, int64 B x max_len or
    float32 B); `where` names the source in errors. Export and evaluation call it too, so the
    tensors they feed the exported models are built exactly as training batches are."""
    if column.null_count:
        raise DataError(f"{where}: column {feature.name!r} has {column.null_count} nulls")
    if feature.kind == "multi_categorical":
        return torch.from_numpy(_padded_lists(column, feature.max_len or 1, where, feature.name))
    if feature.is_index:
        if not pa.types.is_integer(column.type):
            raise DataError(f"{where}: column {feature.name!r} is {column.type}, expected int64")
        values = column.to_numpy().astype(np.int64, copy=False)
    else:
        if not (
            pa.types.is_floating(column.type)
            or pa.types.is_integer(column.type)
            or pa.types.is_boolean(column.type)
        ):
            raise DataError(f"{where}: column {feature.name!r} is {column.type}, expected float")
        values = column.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    values = np.ascontiguousarray(values)
    if not values.flags.writeable:  # a zero-copy view of Arrow memory; torch wants to own it
        values = values.copy()
    return torch.from_numpy(values)


def _padded_lists(column: pa.ChunkedArray, max_len: int, where: str, name: str) -> np.ndarray:
    """A list<int> column as an N x max_len int64 array, 0-padded (or cut) to max_len."""
    array = column.combine_chunks()
    if not (
        pa.types.is_list(array.type)
        or pa.types.is_large_list(array.type)
        or pa.types.is_fixed_size_list(array.type)
    ):
        raise DataError(f"{where}: column {name!r} is {array.type}, expected list<int64>")
    if pa.types.is_fixed_size_list(array.type):
        flat = array.flatten().to_numpy().astype(np.int64)
        width = array.type.list_size
        out = flat.reshape(len(array), width)
        if width >= max_len:
            return np.ascontiguousarray(out[:, :max_len])
        return np.pad(out, ((0, 0), (0, max_len - width)))
    offsets = array.offsets.to_numpy()
    values = array.values.to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = np.diff(offsets)
    out = np.zeros((len(array), max_len), dtype=np.int64)
    keep = np.minimum(lengths, max_len)
    rows = np.repeat(np.arange(len(array)), keep)
    cols = np.arange(int(keep.sum())) - np.repeat(np.cumsum(keep) - keep, keep)
    out[rows, cols] = values[np.repeat(offsets[:-1], keep) + cols]
    return out


def read_shard(
    data_dir: str | Path, split: str, spec: FeatureSpec, rank: int = 0, world_size: int = 1
) -> Shard:
    """Rows `[rank * n // W, (rank + 1) * n // W)` of `data_dir/split`, as tensors."""
    split_dir = Path(data_dir) / split
    where = f"{split_dir}"
    if not split_dir.is_dir():
        raise DataError(f"no {split} split: {split_dir} is not a directory")
    fragments = _row_group_fragments(split_dir)
    total = sum(n for _, n in fragments)
    if total < world_size:
        raise DataError(f"{where} has {total} rows, fewer than the {world_size} workers")
    per_worker = total // world_size
    start, end = rank * per_worker, (rank + 1) * per_worker
    features = used_features(spec)
    names = [f.name for f in features]
    tables, offset = [], 0
    for fragment, n in fragments:
        lo, hi = max(start, offset), min(end, offset + n)
        if lo < hi:
            try:
                table = fragment.to_table(columns=names)
            except (pa.ArrowInvalid, KeyError) as e:
                raise DataError(f"{where}: {e} (the spec's columns: {names})") from e
            tables.append(table.slice(lo - offset, hi - lo))
        offset += n
    table = pa.concat_tables(tables)
    tensors = {f.name: to_tensor(f, table[f.name], where) for f in features}
    for f in features:
        if f.is_index and len(tensors[f.name]):
            low, high = int(tensors[f.name].min()), int(tensors[f.name].max())
            if low < 0 or high >= f.size:
                raise DataError(
                    f"{where}: column {f.name!r} holds indices in [{low}, {high}] but the "
                    f"spec's size is {f.size}: the spec does not match the data"
                )
    return Shard(tensors=tensors, num_rows=table.num_rows, total_rows=total)


def num_batches(num_rows: int, batch_size: int) -> int:
    return -(-num_rows // batch_size)


def iter_batches(
    shard: Shard,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    max_batches: int | None = None,
    min_rows: int = 1,
) -> Iterator[Batch]:
    """Batches of `batch_size` rows; with `shuffle`, a permutation seeded by (seed, epoch, rank).

    A last batch with fewer than `min_rows` rows is skipped (training passes 2: batch norm
    cannot normalise a single row).
    """
    n = shard.num_rows
    order = None
    if shuffle:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1_009 + rank)
        order = torch.randperm(n, generator=generator)
    steps = num_batches(n, batch_size)
    if max_batches is not None:
        steps = min(steps, max_batches)
    for step in range(steps):
        lo, hi = step * batch_size, min((step + 1) * batch_size, n)
        if hi - lo < min_rows:
            return
        if order is None:
            yield {k: v[lo:hi] for k, v in shard.tensors.items()}
        else:
            index = order[lo:hi]
            yield {k: v.index_select(0, index) for k, v in shard.tensors.items()}
