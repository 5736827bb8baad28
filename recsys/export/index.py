"""Faiss item index: build by config, measure recall against exact search, write and read.

Item vectors are the two-tower item tower's outputs (unit L2 norm), so inner product is cosine
similarity. Index types (`index.type`):

- `flat`: exact inner product (`IndexFlatIP`); the reference the others are measured against.
- `hnsw` (default): graph search (`IndexHNSWFlat`, inner product); `hnsw_m` links per node,
  `ef_construction` at build time, `ef_search` at query time (stored in the index file).
- `ivfpq`: inverted lists over product-quantised codes (`IndexIVFPQ`, inner product):
  `nlist` lists (null: 4 * sqrt(N), at most N / 39), `nprobe` lists searched, `pq_m`
  sub-quantisers (null: D / 4; must divide D), `pq_nbits` bits each (cut when N is small).
  It is the memory option: pq_m bytes per item instead of 4 * D, at a recall below the 0.95
  target (PQ codes only approximate the inner product; docs/export.md has the figures).
  `refine: r` wraps it in `IndexRefineFlat`, which re-scores the r * k best codes with the
  exact vectors: recall back above 0.95, but the full vectors are stored again.

`RECALL_TARGET` is the recall@k against exact search the defaults are chosen to reach; the
export report warns below it.

Files are written with `faiss.write_index` (Faiss's own binary format, not a pickle), through
a Python file object.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recsys.errors import RecsysError
from recsys.provenance import open_for_write

log = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "hnsw", "ivfpq")
RECALL_TARGET = 0.95
# 64, not 200: builds 100k items ~10x faster at the same recall on trained two-tower vectors
# (docs/export.md has the figures)
EF_CONSTRUCTION = 64


class IndexConfigError(RecsysError, ValueError):
    """Index settings that cannot work (unknown type, pq_m not dividing the dimension...)."""


@dataclass
class IndexSettings:
    """The `index` node of conf/export.yaml (see there for each knob)."""

    type: str = "hnsw"
    hnsw_m: int = 32
    ef_construction: int = EF_CONSTRUCTION
    ef_search: int = 512
    nlist: int | None = None
    nprobe: int = 32
    pq_m: int | None = None
    pq_nbits: int = 8
    refine: int | None = None
    recall_k: int = 100
    recall_users: int = 1000
    min_recall: float | None = None
    seed: int = 0

    @classmethod
    def from_mapping(cls, node: Any) -> IndexSettings:
        try:
            return cls(**dict(node))
        except TypeError as e:
            raise IndexConfigError(f"index: {e}") from e

    def validate(self) -> None:
        if self.type not in INDEX_TYPES:
            raise IndexConfigError(f"index.type {self.type!r} is not one of {INDEX_TYPES}")
        for key in ("hnsw_m", "ef_construction", "ef_search", "nprobe", "recall_k"):
            if getattr(self, key) < 1:
                raise IndexConfigError(f"index.{key} must be >= 1, got {getattr(self, key)}")
        if self.recall_users < 0:
            raise IndexConfigError(f"index.recall_users must be >= 0, got {self.recall_users}")
        if self.refine is not None and self.refine < 1:
            raise IndexConfigError(f"index.refine must be >= 1 or null, got {self.refine}")
        if self.refine is not None and self.type != "ivfpq":
            raise IndexConfigError(
                f"index.refine re-scores PQ codes and needs type=ivfpq, not {self.type!r}"
            )
        if not 1 <= self.pq_nbits <= 16:
            raise IndexConfigError(f"index.pq_nbits must be in [1, 16], got {self.pq_nbits}")
        if self.min_recall is not None and not 0.0 <= self.min_recall <= 1.0:
            raise IndexConfigError(f"index.min_recall must be in [0, 1], got {self.min_recall}")


def build_index(vectors: np.ndarray, s: IndexSettings) -> tuple[faiss.Index, dict[str, Any]]:
    """An index over `vectors` (N x D float32; row i = id i) and its effective parameters."""
    s.validate()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if n == 0:
        raise IndexConfigError("no item vectors to index")
    ip = faiss.METRIC_INNER_PRODUCT
    params: dict[str, Any] = {"type": s.type, "items": n, "dim": d}
    t0 = time.perf_counter()
    if s.type == "flat":
        index = faiss.IndexFlatIP(d)
    elif s.type == "hnsw":
        index = faiss.IndexHNSWFlat(d, s.hnsw_m, ip)
        index.hnsw.efConstruction = s.ef_construction
        index.hnsw.efSearch = s.ef_search
        params.update(hnsw_m=s.hnsw_m, ef_construction=s.ef_construction, ef_search=s.ef_search)
    else:
        pq_m = s.pq_m if s.pq_m is not None else max(1, d // 4)
        if d % pq_m:
            raise IndexConfigError(f"index.pq_m={pq_m} does not divide the dimension {d}")
        nlist = s.nlist if s.nlist is not None else int(4 * math.sqrt(n))
        nlist = max(1, min(nlist, n // 39 or 1))
        # k-means of each sub-quantiser needs at least 2**nbits training points
        nbits = min(s.pq_nbits, max(1, int(math.log2(n))))
        if nbits < s.pq_nbits:
            log.warning(
                "index: %d items are too few for pq_nbits=%d; using %d", n, s.pq_nbits, nbits
            )
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, nbits, ip)
        ivf.nprobe = min(s.nprobe, nlist)
        params.update(nlist=nlist, nprobe=ivf.nprobe, pq_m=pq_m, pq_nbits=nbits)
        index = ivf
        if s.refine is not None:
            index = faiss.IndexRefineFlat(ivf)
            index.k_factor = float(s.refine)
            params["refine"] = s.refine
        index.train(vectors)
    index.add(vectors)
    params["build_seconds"] = round(time.perf_counter() - t0, 3)
    return index, params


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the top `k` items for each query (Q x D); rows -1 pad short results."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    return index.search(queries, min(k, index.ntotal))


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows of the exact top `k` items by inner product (Q x k), via `IndexFlatIP`."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return search(flat, queries, k)[1]


def recall_at_k(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean share of the exact top-k rows (by inner product) that `index` also returns."""
    if len(queries) == 0:
        return float("nan")
    k = min(k, len(vectors))
    truth = exact_top_k(vectors, queries, k)
    found = search(index, queries, k)[1]
    hits = [len(np.intersect1d(t, f[f >= 0])) for t, f in zip(truth, found, strict=True)]
    return float(np.mean(hits) / k)


def write_index(index: faiss.Index, path: str | Path) -> None:
    """`faiss.write_index` through a Python file object: a failed write (full disk) is then
    an OSError naming `path`, and the index is streamed, not copied into memory first."""
    with open_for_write(Path(path)) as f:
        faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))


def read_index(path: str | Path) -> faiss.Index:
    return faiss.read_index(str(path))
