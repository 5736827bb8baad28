"""Processed data as `recsys.preprocess` writes it, built without Spark, for export tests.

`write_bundle_data(dir)` writes train/ valid/ test/ parquet, feature_spec.json, pipeline/
(fitted state and vocabularies) and user_features/ item_features/ tables. The pipeline is a
real FeaturePipeline: its category steps are fitted from value counts computed here (what
Spark's aggregate job returns) and every row goes through `transform_batch`, so the files
follow the same contracts as Spark's output.

Planted signal: users and items fall in CLUSTERS clusters; a user engages mostly with items
of its own cluster (the user's `activity` and the item's `category` reveal the cluster), while
item popularity is Zipf-like across clusters. A two-tower model can learn the clusters;
popularity cannot.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.features.ops import CategoryEncode
from recsys.features.pipeline import FeaturePipeline

USERS, ITEMS, CLUSTERS, TAGS = 240, 400, 6, 30
RAW_COLUMNS = {
    "user_id": "string",
    "item_id": "string",
    "category": "string",
    "tags": "string",
    "activity": "float64",
    "engaged_at": "int64",
}
FEATURES = {
    "name": "bundle_test",
    "steps": {
        "ids": {"op": "category", "columns": ["user_id", "item_id"], "out": ["user", "item"]},
        "category": {"op": "category", "columns": ["category"]},
        "tags": {"op": "category", "columns": ["tags"], "split": "\t", "max_len": 3},
        "label": {"op": "label", "columns": ["engaged_at"], "out": "label"},
    },
    "outputs": {
        "label": {},
        "user": {"entity": "user", "inputs": ["deep", "user_tower"]},
        "activity": {"entity": "user", "inputs": ["deep", "user_tower"]},
        "item": {"entity": "item", "inputs": ["deep", "item_tower"]},
        "category": {"entity": "item", "inputs": ["wide", "deep", "item_tower"]},
        "tags": {"entity": "item", "inputs": ["deep", "item_tower"]},
    },
    "label": "label",
    "user_id": "user",
    "item_id": "item",
}


def raw_rows(rows: int = 9000, seed: int = 0) -> pa.Table:
    """Raw interactions (one row per impression; `engaged_at` set when engaged)."""
    rng = np.random.default_rng(seed)
    user_cluster = rng.integers(0, CLUSTERS, USERS)
    item_cluster = rng.integers(0, CLUSTERS, ITEMS)
    popularity = 1.0 / np.arange(1, ITEMS + 1) ** 0.8
    item_tags = [rng.choice(TAGS, rng.integers(0, 3), replace=False) for _ in range(ITEMS)]
    user = rng.integers(0, USERS, rows)
    own = rng.random(rows) < 0.7
    item = np.empty(rows, np.int64)
    everything = np.arange(ITEMS)
    for i in range(rows):
        pool = np.flatnonzero(item_cluster == user_cluster[user[i]]) if own[i] else everything
        p = popularity[pool] / popularity[pool].sum()
        item[i] = rng.choice(pool, p=p)
    same = item_cluster[item] == user_cluster[user]
    engaged = rng.random(rows) < np.where(same, 0.8, 0.05)
    return pa.table(
        {
            "user_id": pa.array([f"u{u}" for u in user]),
            "item_id": pa.array([f"i{i}" for i in item]),
            "category": pa.array([f"c{item_cluster[i]}" for i in item]),
            "tags": pa.array(["\t".join(f"t{t}" for t in item_tags[i]) for i in item]),
            "activity": pa.array((user_cluster[user] + 0.5) / CLUSTERS, pa.float64()),
            "engaged_at": pa.array(
                [1_600_000_000 + i if e else None for i, e in enumerate(engaged)], pa.int64()
            ),
        }
    )


def fit_pipeline(train: pa.Table) -> FeaturePipeline:
    """The FEATURES pipeline fitted on `train` without Spark (value counts in Python)."""
    pipeline = FeaturePipeline.from_config(FEATURES, RAW_COLUMNS)
    for step in pipeline.steps:
        if not isinstance(step, CategoryEncode):
            continue
        keys, values, counts = [], [], []
        for column in step.columns:
            counter: Counter[str] = Counter()
            for value in train[column].to_pylist():
                if value is None or value == "":
                    continue
                parts = value.split(step.params.split) if step.params.split else [value]
                counter.update(p for p in parts if p)
            key = f"{step.name}/{step.vocab_key(column)}"
            for value, count in counter.items():
                keys.append(key)
                values.append(value)
                counts.append(count)
        step.fit_aggregates(
            pa.table({"key": keys, "value": values, "count": pa.array(counts, pa.int64())})
        )
        step.fitted = True
    return pipeline


def _first_rows(table: pa.Table, key: str) -> pa.Table:
    ids = table[key].to_numpy()
    _, first = np.unique(ids, return_index=True)
    return table.take(np.sort(first[ids[first] >= 2]))


def write_bundle_data(out: Path, rows: int = 9000, seed: int = 0) -> Path:
    raw = raw_rows(rows, seed)
    order = np.random.default_rng(seed + 1).permutation(rows)
    n_train, n_valid = int(rows * 0.7), int(rows * 0.15)
    splits = {
        "train": raw.take(order[:n_train]),
        "valid": raw.take(order[n_train : n_train + n_valid]),
        "test": raw.take(order[n_train + n_valid :]),
    }
    pipeline = fit_pipeline(splits["train"])
    processed = []
    outputs = list(FEATURES["outputs"])
    for name, table in splits.items():
        done = pipeline.transform_batch(table, keep=["user_id", "item_id"])
        (out / name).mkdir(parents=True)
        pq.write_table(done.select(outputs), out / name / "part-00000.parquet", row_group_size=2000)
        processed.append(done)
    pipeline.save(out / "pipeline")
    pipeline.feature_spec(vocabulary_dir="pipeline/vocabularies").save(out)
    everything = pa.concat_tables(processed)
    users = _first_rows(everything, "user").select(["user", "user_id", "activity"])
    items = _first_rows(everything, "item").select(["item", "item_id", "category", "tags"])
    for directory, table, key in (
        ("user_features", users, "user"),
        ("item_features", items, "item"),
    ):
        (out / directory).mkdir()
        names = [f"{key}_raw" if c == f"{key}_id" else c for c in table.column_names]
        pq.write_table(table.rename_columns(names), out / directory / "part-00000.parquet")
    return out
