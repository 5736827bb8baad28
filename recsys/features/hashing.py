"""The one hash of the project: XXH64 with seed 42 over UTF-8 bytes, as Spark's `xxhash64`.

Hash encoding and crossed columns must give the same index offline (Spark) and online
(serving, no Spark), in every process. Python's `hash()` is salted per process, and Spark's
`hash()` is a Murmur3 variant that differs from standard Murmur3 on strings whose byte length
is not a multiple of 4, so neither will do. The choice:

- **Function**: XXH64 (the standard xxHash 64-bit algorithm), seed 42, over the UTF-8 bytes
  of the value's string form. It is what Spark's built-in `xxhash64(col)` computes for a
  string column (Spark's XXH64 is the reference algorithm; `tests/integration/test_hashing_spark.py`
  holds the two equal on thousands of strings, unicode and empty included).
- **Several columns** (crosses) chain the hash the way Spark's `xxhash64(a, b, ...)` does:
  the hash of `a` is the seed for hashing `b`, and so on.
- **String form**: integers as decimal digits, booleans as `true` / `false` (Spark's cast to
  string); floating-point columns are refused (their string forms differ between engines).
- **Bucket**: a value goes to `1 + pmod(h, buckets - 1)`, so indices lie in `[1, buckets)`
  and index 0 stays free for "missing" (a null or empty value), as DESIGN.md's encoding asks.

Offline, Spark computes it natively (`hash_bucket_sql`); online, `hash_bucket` computes it
with vectorised numpy (no per-row Python), below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from pyspark.sql import Column

SEED = 42
"""Spark's `xxhash64` seed; every hash in the project uses it."""

_P1 = np.uint64(11400714785074694791)
_P2 = np.uint64(14029467366897019727)
_P3 = np.uint64(1609587929392839161)
_P4 = np.uint64(9650029242287828579)
_P5 = np.uint64(2870177450012600261)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _round(acc: np.ndarray, lane: np.ndarray) -> np.ndarray:
    return _rotl(acc + lane * _P2, 31) * _P1


def _words(data: np.ndarray, dtype: str) -> np.ndarray:
    """A view of `data` as little-endian words starting at every byte (unaligned reads)."""
    size = np.dtype(dtype).itemsize
    return np.ndarray(
        shape=(max(len(data) - size + 1, 0),), dtype=dtype, buffer=data, offset=0, strides=(1,)
    )


def xxhash64_bytes(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, seeds) -> np.ndarray:
    """XXH64 of the byte ranges `data[starts[i] : starts[i] + lengths[i]]`, one per row.

    `data` is a uint8 buffer, `starts` and `lengths` int64 arrays of N rows, `seeds` a scalar
    or N uint64 seeds. Returns N uint64 hashes. Vectorised over rows: the loops run over the
    32-byte stripes and 8/4/1-byte tails of the longest value, not over rows.
    """
    n = len(starts)
    # 8 spare bytes so that an 8-byte read at any valid start stays inside the buffer
    buf = np.concatenate([np.asarray(data, dtype=np.uint8), np.zeros(8, np.uint8)])
    w64, w32 = _words(buf, "<u8"), _words(buf, "<u4")
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    seed = np.broadcast_to(np.asarray(seeds, dtype=np.uint64), (n,)).copy()
    h = seed + _P5
    pos = starts.copy()

    long_rows = np.flatnonzero(lengths >= 32)
    if len(long_rows):
        s = seed[long_rows]
        v = [s + _P1 + _P2, s + _P2, s.copy(), s - _P1]
        p = starts[long_rows].copy()
        stripes = lengths[long_rows] // 32
        for stripe in range(int(stripes.max())):
            live = stripes > stripe
            for lane in range(4):
                v[lane] = np.where(live, _round(v[lane], w64[p + 8 * lane]), v[lane])
            p = np.where(live, p + 32, p)
        acc = _rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)
        for lane in range(4):
            acc = (acc ^ _round(np.zeros_like(acc), v[lane])) * _P1 + _P4
        h[long_rows] = acc
        pos[long_rows] = p

    h = h + lengths.astype(np.uint64)
    end = starts + lengths
    for _ in range(3):  # at most three 8-byte words remain after the stripes
        live = end - pos >= 8
        if not live.any():
            break
        k = _round(np.zeros(n, np.uint64), w64[np.where(live, pos, 0)])
        h = np.where(live, _rotl(h ^ k, 27) * _P1 + _P4, h)
        pos = np.where(live, pos + 8, pos)
    live = end - pos >= 4
    if live.any():
        k = w32[np.where(live, pos, 0)].astype(np.uint64) * _P1
        h = np.where(live, _rotl(h ^ k, 23) * _P2 + _P3, h)
        pos = np.where(live, pos + 4, pos)
    for _ in range(3):  # at most three single bytes remain
        live = end - pos >= 1
        if not live.any():
            break
        k = buf[np.where(live, pos, 0)].astype(np.uint64) * _P5
        h = np.where(live, _rotl(h ^ k, 11) * _P1, h)
        pos = np.where(live, pos + 1, pos)

    h ^= h >> np.uint64(33)
    h *= _P2
    h ^= h >> np.uint64(29)
    h *= _P3
    h ^= h >> np.uint64(32)
    return h


def string_form(values: pa.Array | pa.ChunkedArray, column: str = "value") -> pa.Array:
    """The string a value is hashed as: Spark's `cast(x as string)` for strings, ints, bools."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    t = values.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return values.cast(pa.string())
    if pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_null(t):
        return pc.cast(values, pa.string())
    raise TypeError(f"column {column!r}: cannot hash values of type {t} (strings, ints, bools)")


def xxhash64(columns: Sequence[pa.Array], seed: int = SEED) -> np.ndarray:
    """Spark's `xxhash64(c1, c2, ...)` on Arrow arrays of strings: int64 per row.

    Each column is hashed with the previous column's hash as seed; nulls are skipped (the
    seed passes through unchanged), as in Spark.
    """
    if not columns:
        raise ValueError("xxhash64 needs at least one column")
    n = len(columns[0])
    h = np.full(n, np.uint64(seed), dtype=np.uint64)
    for column in columns:
        arr = string_form(column)
        _, offsets_buf, data_buf = arr.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int32)[arr.offset : arr.offset + n + 1]
        offsets = offsets.astype(np.int64)
        data = np.zeros(0, np.uint8)
        if data_buf is not None:
            data = np.frombuffer(data_buf, dtype=np.uint8)
        hashed = xxhash64_bytes(data, offsets[:-1], np.diff(offsets), h)
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        h = np.where(valid, hashed, h)
    return h.view(np.int64)


def is_missing(values: pa.Array) -> np.ndarray:
    """True where a value counts as missing: null, or an empty string."""
    missing = values.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        missing |= (pc.binary_length(values).fill_null(0).to_numpy(zero_copy_only=False)) == 0
    return missing


def check_buckets(buckets: int) -> None:
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 2:
        raise ValueError(f"buckets must be an integer >= 2, got {buckets!r}")


def hash_bucket(columns: Sequence[pa.Array], buckets: int) -> np.ndarray:
    """Bucket index per row: 0 if any column is missing, else `1 + pmod(xxhash64, buckets - 1)`."""
    check_buckets(buckets)
    arrays = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns]
    h = xxhash64(arrays)
    # np.mod of int64 by a positive int is the floor modulo, like Spark's pmod
    index = 1 + np.mod(h, np.int64(buckets - 1))
    missing = np.zeros(len(h), dtype=bool)
    for arr in arrays:
        missing |= is_missing(arr)
    return np.where(missing, 0, index).astype(np.int64)


def spark_is_missing(column: Column, is_string: bool) -> Column:
    """Spark twin of `is_missing`."""
    from pyspark.sql import functions as F

    return (column.isNull() | (column == F.lit(""))) if is_string else column.isNull()


def hash_bucket_sql(columns: Sequence[str], string_flags: Sequence[bool], buckets: int) -> str:
    """Spark SQL twin of `hash_bucket` (native `xxhash64`, no Python in the loop)."""
    from recsys.features.sql import ident
    from recsys.features.sql import missing as sql_missing

    check_buckets(buckets)
    strings = ", ".join(f"CAST({ident(c)} AS STRING)" for c in columns)
    missing = " OR ".join(
        sql_missing(c, flag) for c, flag in zip(columns, string_flags, strict=True)
    )
    index = f"pmod(xxhash64({strings}), {buckets - 1}L) + 1L"
    return f"CASE WHEN {missing} THEN 0L ELSE {index} END"
