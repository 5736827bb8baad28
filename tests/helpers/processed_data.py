"""A small processed data set in the FeatureSpec column contract, with a planted signal.

For training tests that must not depend on Spark: `write_processed(dir)` writes train/, valid/,
test/ parquet and feature_spec.json as `recsys.preprocess` would.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.features.feature_spec import Feature, FeatureSpec

USERS, ITEMS, CATEGORIES, TAGS, CROSS, MAX_TAGS = 200, 300, 10, 30, 50, 3


def spec() -> FeatureSpec:
    return FeatureSpec(
        features=[
            Feature("user", "categorical", ["user_id"], "user", ["deep", "user_tower"], USERS + 2),
            Feature("item", "categorical", ["item_id"], "item", ["deep", "item_tower"], ITEMS + 2),
            Feature(
                "category",
                "categorical",
                ["cat"],
                "item",
                ["wide", "deep", "item_tower"],
                CATEGORIES + 2,
            ),
            Feature("cross", "cross", ["user_id", "cat"], "context", ["wide"], CROSS),
            Feature(
                "tags",
                "multi_categorical",
                ["tags"],
                "item",
                ["deep", "item_tower"],
                TAGS + 2,
                MAX_TAGS,
                "mean",
            ),
            Feature(
                "activity",
                "continuous",
                ["activity"],
                "user",
                ["deep", "user_tower"],
                stats={"min": 0.0, "max": 1.0},
            ),
            Feature("label", "label", ["clicked"]),
        ],
        label="label",
        user_id="user",
        item_id="item",
        dataset="synthetic",
    )


def _split(rng: np.random.Generator, n: int, world: dict) -> pa.Table:
    user = rng.integers(2, USERS + 2, n)
    item = (rng.zipf(1.3, n) % ITEMS) + 2
    category = world["item_category"][item]
    activity = rng.random(n).astype(np.float32)
    logit = (
        2.5 * np.einsum("ij,ij->i", world["user_vec"][user], world["item_vec"][item])
        + world["category_effect"][category]
        + 1.0 * (activity - 0.5)
    )
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    n_tags = rng.integers(0, MAX_TAGS + 1, n)
    tags = [list(rng.integers(2, TAGS + 2, k)) + [0] * (MAX_TAGS - k) for k in n_tags]
    cross = (user * 31 + category) % CROSS
    return pa.table(
        {
            "user": pa.array(user, pa.int64()),
            "item": pa.array(item, pa.int64()),
            "category": pa.array(category, pa.int64()),
            "cross": pa.array(cross, pa.int64()),
            "tags": pa.array(tags, pa.list_(pa.int64())),
            "activity": pa.array(activity, pa.float32()),
            "label": pa.array(label, pa.float32()),
        }
    )


def write_processed(out: Path, rows: int = 8000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    world = {
        "user_vec": rng.normal(size=(USERS + 2, 4)) / 2,
        "item_vec": rng.normal(size=(ITEMS + 2, 4)) / 2,
        "item_category": rng.integers(2, CATEGORIES + 2, ITEMS + 2),
        "category_effect": rng.normal(size=CATEGORIES + 2),
    }
    sizes = {"train": int(rows * 0.7), "valid": int(rows * 0.15), "test": int(rows * 0.15)}
    for split, n in sizes.items():
        (out / split).mkdir(parents=True)
        table = _split(rng, n, world)
        half = n // 2  # two files, several row groups: shards cross file boundaries
        pq.write_table(table.slice(0, half), out / split / "part-0.parquet", row_group_size=500)
        pq.write_table(table.slice(half), out / split / "part-1.parquet", row_group_size=700)
    spec().save(out)
    return out
