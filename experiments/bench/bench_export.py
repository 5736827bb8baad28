"""Export cost and Faiss query latency at 100,000 and 1,000,000 items, per index type.

    python experiments/bench/bench_export.py [--items 100000 1000000] [--types flat hnsw ivfpq]
        [--ef-construction 200 64] [--refine 0 10]

What is measured (synthetic catalogue; no trained run needed):
- `embed_seconds`: the retrieval part of an export for N items: a TwoTower item tower at the
  default sizes (embedding 16, tower [1024, 512, 128] -> D = 128) over a synthetic item table
  (item id, category, 3 tags, one continuous column), in batches of 8192, as
  `recsys.export.writer` does it; plus `id_map_seconds` (items.parquet + item_ids.parquet);
- per index type at the export defaults (conf/export.yaml): `build_seconds` (train + add),
  `write_seconds` (faiss.write_index + sha256, as the manifest needs), `index_bytes`;
  `export_seconds` = embed + id map + build + write, `bundle_bytes` = index + id map + items
  table (the models and the user side do not grow with N);
- `query_ms`: Faiss search latency at K=200, p50 and p99, for one query at a time (200
  queries) and for batches of 256 queries (20 batches); queries are random unit vectors;
- `recall`: recall@200 of the index against exact search over the 200 single queries (random
  unit queries against an untrained tower's vectors: harder than trained user vectors, whose
  recall the export report gives);
- `--ef-construction` and `--refine` list HNSW efConstruction values and IVF-PQ refine
  factors (0 = none) to compare; each gets its own lines (default: the export defaults).
One JSON line per figure, each with the 1-minute load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recsys.export import layout
from recsys.export.index import IndexSettings, build_index, recall_at_k, write_index
from recsys.export.tensors import to_tensors
from recsys.features.feature_spec import Feature, FeatureSpec
from recsys.models.two_tower import TwoTower

K = 200


def emit(out: Path | None, **figure: object) -> None:
    figure = {"bench": "export", **figure, "load1": round(os.getloadavg()[0], 2)}
    line = json.dumps(figure)
    print(line, flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(line + "\n")


def catalogue(n: int, seed: int = 0) -> tuple[FeatureSpec, pa.Table]:
    rng = np.random.default_rng(seed)
    spec = FeatureSpec(
        features=[
            Feature("user", "categorical", ["u"], "user", ["user_tower"], 1002),
            Feature("activity", "continuous", ["a"], "user", ["user_tower"]),
            Feature("item", "categorical", ["i"], "item", ["item_tower"], n + 2),
            Feature("category", "categorical", ["c"], "item", ["item_tower"], 102),
            Feature("tags", "multi_categorical", ["t"], "item", ["item_tower"], 1002, 3, "mean"),
            Feature("length", "continuous", ["l"], "item", ["item_tower"]),
        ],
        user_id="user",
        item_id="item",
    )
    tags = rng.integers(0, 1002, (n, 3))
    table = pa.table(
        {
            "item": pa.array(np.arange(2, n + 2), pa.int64()),
            "item_raw": pa.array([f"{i:016x}" for i in rng.integers(0, 2**62, n)]),
            "category": pa.array(rng.integers(2, 102, n), pa.int64()),
            "tags": pa.FixedSizeListArray.from_arrays(pa.array(tags.reshape(-1)), 3).cast(
                pa.list_(pa.int64())
            ),
            "length": pa.array(rng.random(n).astype(np.float32)),
        }
    )
    return spec, table


def percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def variants(types: list[str], ef_constructions: list[int], refines: list[int]) -> list[dict]:
    """IndexSettings keyword sets to measure: one per type, HNSW and IVF-PQ per listed knob."""
    out: list[dict] = []
    for kind in types:
        if kind == "hnsw" and ef_constructions:
            out += [{"type": kind, "ef_construction": ef} for ef in ef_constructions]
        elif kind == "ivfpq" and refines:
            out += [{"type": kind, "refine": r or None} for r in refines]
        else:
            out.append({"type": kind})
    return out


def bench(n: int, kinds: list[dict], out: Path | None, work: Path, threads: int) -> None:
    torch.manual_seed(0)
    spec, items = catalogue(n)
    model = TwoTower(spec).eval()  # defaults: embedding 16, tower [1024, 512, 128]
    features = spec.for_input("item_tower")
    t0 = time.perf_counter()
    parts = []
    with torch.no_grad():
        for start in range(0, n, 8192):
            batch = to_tensors(items.slice(start, 8192), features)
            parts.append(model.item_tower(batch).numpy())
    vectors = np.concatenate(parts)
    embed = time.perf_counter() - t0
    dim = vectors.shape[1]
    common = {"items": n, "dim": dim, "threads": threads}
    emit(out, figure="embed_seconds", value=round(embed, 2), **common)
    t0 = time.perf_counter()
    pq.write_table(items, work / layout.ITEMS)
    ids = pa.table(
        {"row": pa.array(np.arange(n)), "item_id": items["item"], "raw_id": items["item_raw"]}
    )
    pq.write_table(ids, work / layout.ITEM_IDS)
    for name in (layout.ITEMS, layout.ITEM_IDS):
        layout.sha256(work / name)
    id_map = time.perf_counter() - t0
    table_bytes = sum((work / f).stat().st_size for f in (layout.ITEMS, layout.ITEM_IDS))
    emit(out, figure="id_map_seconds", value=round(id_map, 2), bytes=table_bytes, **common)
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(200 + 20 * 256, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for knobs in kinds:
        kind = knobs["type"]
        settings = IndexSettings(**knobs)
        t0 = time.perf_counter()
        index, params = build_index(vectors, settings)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        path = work / layout.INDEX
        write_index(index, path)
        layout.sha256(path)
        write = time.perf_counter() - t0
        size = path.stat().st_size
        extra = {
            k: v for k, v in params.items() if k not in ("type", "items", "dim", "build_seconds")
        }
        tagged = {**common, "index": kind, "params": extra}
        emit(out, figure="build_seconds", value=round(build, 2), **tagged)
        emit(out, figure="write_seconds", value=round(write, 2), index_bytes=size, **tagged)
        emit(
            out,
            figure="export_seconds",
            value=round(embed + id_map + build + write, 2),
            bundle_bytes=size + table_bytes,
            **tagged,
        )
        index.search(queries[:8], K)  # warm up
        single = []
        for q in queries[:200]:
            t0 = time.perf_counter()
            index.search(q[None, :], K)
            single.append((time.perf_counter() - t0) * 1e3)
        p50, p99 = percentiles(single)
        emit(out, figure="query_ms", batch=1, k=K, p50=round(p50, 3), p99=round(p99, 3), **tagged)
        recall = recall_at_k(index, vectors, queries[:200], K)
        emit(out, figure="recall", k=K, value=round(recall, 4), queries=200, **tagged)
        batched = []
        for b in range(20):
            chunk = queries[200 + b * 256 : 200 + (b + 1) * 256]
            t0 = time.perf_counter()
            index.search(chunk, K)
            batched.append((time.perf_counter() - t0) * 1e3)
        p50, p99 = percentiles(batched)
        emit(
            out,
            figure="query_ms",
            batch=256,
            k=K,
            p50=round(p50, 3),
            p99=round(p99, 3),
            per_query_p50=round(p50 / 256, 4),
            **tagged,
        )
        del index
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--types", nargs="+", default=["flat", "hnsw", "ivfpq"])
    parser.add_argument("--ef-construction", type=int, nargs="*", default=[])
    parser.add_argument("--refine", type=int, nargs="*", default=[])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=None, help="also append the lines here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    for n in args.items:
        with tempfile.TemporaryDirectory(prefix="bench_export-") as tmp:
            kinds = variants(args.types, args.ef_construction, args.refine)
            bench(n, kinds, args.out, Path(tmp), args.threads)


if __name__ == "__main__":
    main()
