"""A bundle for serving tests and the serving benchmark, built without Spark or training.

`build_bundle(out, users=..., items=...)` writes processed data (tests/helpers/bundle_data.py's
planted clusters plus a request-time `device` context column encoded by the pipeline), two
"runs" whose best checkpoints hold randomly initialised models built from that FeatureSpec
(W&D ranker, two-tower retrieval), and exports them through `recsys.export.export_bundle`,
so the bundle is exactly what the export writes. Every step is vectorised: 100,000 items take
seconds plus the index build.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from omegaconf import OmegaConf

from recsys.export import ExportSettings, export_bundle
from recsys.export.index import IndexSettings
from recsys.features.ops import CategoryEncode
from recsys.features.pipeline import FeaturePipeline
from recsys.models import build_model
from recsys.train.checkpoints import write_checkpoint
from tests.helpers.bundle_data import FEATURES, RAW_COLUMNS
from tests.helpers.train_config import train_config

DEVICES = ("phone", "web", "tablet")
SERVING_COLUMNS = {**RAW_COLUMNS, "device": "string"}
SERVING_FEATURES = {
    **FEATURES,
    "name": "serving_test",
    "steps": {**FEATURES["steps"], "device": {"op": "category", "columns": ["device"]}},
    "outputs": {**FEATURES["outputs"], "device": {"entity": "context", "inputs": ["wide", "deep"]}},
}


def raw_rows(users: int, items: int, rows: int, seed: int = 0) -> pa.Table:
    """Interactions; every item appears at least once (so the catalogue has `items` items)."""
    rng = np.random.default_rng(seed)
    clusters = 6
    user_cluster = rng.integers(0, clusters, users)
    item_cluster = rng.integers(0, clusters, items)
    item_tags = rng.integers(0, 30, (items, 2))
    n_tags = rng.integers(0, 3, items)
    rows = max(rows, items)
    user = rng.integers(0, users, rows)
    item = np.concatenate([np.arange(items), rng.zipf(1.3, rows - items) % items])
    same = item_cluster[item] == user_cluster[user]
    engaged = rng.random(rows) < np.where(same, 0.8, 0.05)
    tag_text = np.array(
        ["\t".join(f"t{t}" for t in item_tags[i, : n_tags[i]]) for i in range(items)], object
    )
    return pa.table(
        {
            "user_id": pa.array(np.char.add("u", user.astype(str)).tolist()),
            "item_id": pa.array(np.char.add("i", item.astype(str)).tolist()),
            "category": pa.array(np.char.add("c", item_cluster[item].astype(str)).tolist()),
            "tags": pa.array(tag_text[item].tolist(), pa.string()),
            "activity": pa.array((user_cluster[user] + 0.5) / clusters, pa.float64()),
            "engaged_at": pa.array(1_600_000_000 + np.arange(rows), pa.int64(), mask=~engaged),
            "device": pa.array(np.array(DEVICES)[rng.integers(0, 3, rows)].tolist()),
        }
    )


def fit_pipeline(train: pa.Table) -> FeaturePipeline:
    """SERVING_FEATURES fitted on `train` with pyarrow value counts (what Spark computes)."""
    pipeline = FeaturePipeline.from_config(SERVING_FEATURES, SERVING_COLUMNS)
    for step in pipeline.steps:
        if not isinstance(step, CategoryEncode):
            continue
        parts = []
        for column in step.columns:
            values = train[column]
            if step.params.split:
                values = pc.split_pattern(values, step.params.split).combine_chunks().flatten()
            counts = pc.value_counts(values.filter(pc.fill_null(pc.not_equal(values, ""), False)))
            n = len(counts)
            parts.append(
                pa.table(
                    {
                        "key": pa.array([f"{step.name}/{step.vocab_key(column)}"] * n),
                        "value": counts.field("values"),
                        "count": counts.field("counts").cast(pa.int64()),
                    }
                )
            )
        step.fit_aggregates(pa.concat_tables(parts))
        step.fitted = True
    return pipeline


def _first_rows(table: pa.Table, key: str) -> pa.Table:
    ids = table[key].to_numpy()
    _, first = np.unique(ids, return_index=True)
    return table.take(np.sort(first[ids[first] >= 2]))


def write_data(out: Path, users: int, items: int, rows: int, seed: int = 0) -> Path:
    raw = raw_rows(users, items, rows, seed)
    n = raw.num_rows
    order = np.random.default_rng(seed + 1).permutation(n)
    n_train, n_valid = int(n * 0.8), int(n * 0.1)
    splits = {
        "train": raw.take(order[:n_train]),
        "valid": raw.take(order[n_train : n_train + n_valid]),
        "test": raw.take(order[n_train + n_valid :]),
    }
    pipeline = fit_pipeline(splits["train"])
    outputs = list(SERVING_FEATURES["outputs"])
    processed = []
    for name, table in splits.items():
        done = pipeline.transform_batch(table, keep=["user_id", "item_id"])
        (out / name).mkdir(parents=True)
        pq.write_table(done.select(outputs), out / name / "part-00000.parquet")
        processed.append(done)
    pipeline.save(out / "pipeline")
    pipeline.feature_spec(vocabulary_dir="pipeline/vocabularies").save(out)
    everything = pa.concat_tables(processed)
    tables = {
        "user_features": (
            _first_rows(everything, "user").select(["user", "user_id", "activity"]),
            "user",
        ),
        "item_features": (
            _first_rows(everything, "item").select(["item", "item_id", "category", "tags"]),
            "item",
        ),
    }
    for directory, (table, key) in tables.items():
        (out / directory).mkdir()
        names = [f"{key}_raw" if c == f"{key}_id" else c for c in table.column_names]
        pq.write_table(table.rename_columns(names), out / directory / "part-00000.parquet")
    return out


def write_run(data: Path, run_dir: Path, model: str, overrides: list[str], seed: int) -> Path:
    """A run directory whose best checkpoint holds a randomly initialised `model`."""
    from recsys.features.feature_spec import FeatureSpec

    cfg = train_config(data, run_dir, model, *overrides)
    config = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    config.pop("paths", None)
    config["data"] = str(data)
    spec = FeatureSpec.load(data)
    torch.manual_seed(seed)
    module = build_model(cfg.model, spec).eval()
    best = run_dir / "checkpoints" / "best"
    best.parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint(
        best,
        model=module,
        wrapper_extra={},
        optimizers=[],
        scheduler_state=None,
        state={"epoch": 0, "metrics": {}},
        spec=spec,
        config=config,
    )
    # export records result.json; these runs were never trained
    (run_dir / "result.json").write_text('{"note": "randomly initialised, not trained"}\n')
    return run_dir


def build_bundle(
    out: Path,
    users: int = 240,
    items: int = 400,
    rows: int = 6000,
    index: IndexSettings | None = None,
    ranker_overrides: tuple[str, ...] = (),
    tower_overrides: tuple[str, ...] = (),
    seed: int = 0,
    work: Path | None = None,
) -> Path:
    """Processed data, two runs and the exported bundle at `out` (work files beside it)."""
    work = work or out.parent / f"{out.name}-work"
    data = write_data(work / "data", users, items, rows, seed)
    ranker = write_run(data, work / "wide_deep", "wide_deep", list(ranker_overrides), seed)
    tower = write_run(data, work / "two_tower", "two_tower", list(tower_overrides), seed + 1)
    settings = ExportSettings(
        ranker_run=str(ranker),
        retrieval_run=str(tower),
        out=str(out),
        index=index or IndexSettings(type="flat", recall_users=50),
        example_rows=64,
    )
    export_bundle(settings)
    return out
