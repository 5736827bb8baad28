"""Trained runs -> one bundle directory (DESIGN.md, "Bundle"); `python -m recsys.export`.

    export_bundle(ExportSettings(ranker_run=..., retrieval_run=..., out=...)) -> manifest

Reads the best checkpoint of a ranker run (W&D, DeepFM) and of a two-tower run, the processed
data each was trained on (its `data` setting: feature spec, fitted pipeline, user and item
feature tables, train split), and writes everything serving needs into a temp directory
beside `out`, renamed into place at the end (`out` is whole or absent; an existing `out` is
replaced only with `overwrite`). recsys/export/layout.py lists the files.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import Tensor, nn

from recsys import interrupts
from recsys.errors import RecsysError
from recsys.export import layout
from recsys.export.blend import BlendSettings
from recsys.export.formats import ModuleReport, check_format, file_name, save_module
from recsys.export.index import (
    RECALL_TARGET,
    IndexSettings,
    build_index,
    recall_at_k,
    write_index,
)
from recsys.export.prior import BETAS, Prior, choose_beta, scale_for
from recsys.export.reader import load_bundle
from recsys.export.tensors import read_table, to_tensors
from recsys.features.feature_spec import FEATURE_SPEC_FILE, Feature, FeatureSpec
from recsys.models import build_model
from recsys.provenance import copy_tree, git_sha, package_versions, swap_in, write_json_atomic
from recsys.train.checkpoints import CheckpointError, read_checkpoint

log = logging.getLogger(__name__)

RANKER_INPUTS = ("wide", "deep")


class ExportError(RecsysError):
    """A run or its data that cannot be exported; the message names the run, file or setting."""


@dataclass
class ExportSettings:
    """What `export_bundle` needs (conf/export.yaml describes each knob)."""

    ranker_run: str
    retrieval_run: str
    out: str
    format: str = "torchscript"
    overwrite: bool = False
    embed_batch_size: int = 8192
    example_rows: int = 256
    index: IndexSettings = field(default_factory=IndexSettings)
    blend: BlendSettings = field(default_factory=BlendSettings)

    def validate(self) -> None:
        try:
            check_format(self.format)
        except RecsysError as e:
            raise ExportError(f"format: {e}") from None
        if self.embed_batch_size < 1 or self.example_rows < 2:
            raise ExportError("embed_batch_size must be >= 1 and example_rows >= 2")
        self.index.validate()
        try:
            self.blend.validate()
        except RecsysError as e:
            raise ExportError(str(e)) from None


@dataclass
class SourceRun:
    """A run directory's best checkpoint, loaded: model, spec, config, result, data."""

    role: str
    run_dir: Path
    model: nn.Module
    spec: FeatureSpec
    config: dict[str, Any]
    state: dict[str, Any]
    result: dict[str, Any] | None
    data: Path


def check_export(settings: ExportSettings) -> None:
    """What can be known wrong before any work: settings, existing output, missing runs."""
    settings.validate()
    out = Path(settings.out)
    if out.exists() and not settings.overwrite:
        raise ExportError(f"output {out} already exists; pass overwrite=true to replace it")
    for role, run in (
        ("ranker_run", settings.ranker_run),
        ("retrieval_run", settings.retrieval_run),
    ):
        best = Path(run) / "checkpoints" / "best"
        if not Path(run).is_dir():
            raise ExportError(f"{role}={run} is not a directory (pass a training run directory)")
        if not (best / "state.json").is_file():
            raise ExportError(
                f"{role}={run} holds no checkpoint: {best}/state.json is missing "
                "(did the run finish an epoch?)"
            )


def load_run(run_dir: str | Path, role: str) -> SourceRun:
    """The best checkpoint of `run_dir`, its model rebuilt with the saved weights."""
    run_dir = Path(run_dir)
    best = run_dir / "checkpoints" / "best"
    try:
        ckpt = read_checkpoint(best)
    except CheckpointError as e:
        raise ExportError(f"{role} run {run_dir}: {e}") from e
    config, spec = ckpt["config"], ckpt["spec"]
    if "model" not in config or "data" not in config:
        raise ExportError(f"{best}/config.json lacks the model or data setting")
    try:
        model = build_model(config["model"], spec)
        model.load_state_dict(ckpt["model"])
    except Exception as e:
        raise ExportError(f"{role} run {run_dir}: cannot rebuild the model: {e}") from e
    model.eval()
    result_file = run_dir / "result.json"
    result = _read_result(result_file) if result_file.is_file() else None
    if result is None:
        log.warning(
            "%s run %s has no result.json (unfinished?); exporting its best epoch", role, run_dir
        )
    data = Path(config["data"])
    return SourceRun(role, run_dir, model, spec, config, ckpt["state"], result, data)


def _read_result(path: Path) -> dict[str, Any]:
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(result, dict):
        raise ExportError(f"{path} does not hold a JSON object")
    return result


def _check_data(run: SourceRun, tables: tuple[str, ...]) -> None:
    """The run's processed data is there and still has the spec the model was trained with."""
    where = f"{run.role} run {run.run_dir}: processed data {run.data}"
    if not (run.data / FEATURE_SPEC_FILE).is_file():
        raise ExportError(f"{where} is missing (no {FEATURE_SPEC_FILE})")
    if FeatureSpec.load(run.data) != run.spec:
        raise ExportError(
            f"{where}: {FEATURE_SPEC_FILE} differs from the checkpoint's (data re-processed "
            "after training?); the snapshot would not match the model"
        )
    for name in ("pipeline", *tables):
        if not (run.data / name).is_dir():
            raise ExportError(f"{where} has no {name}/ (preprocess with tables=true)")


def _example(run: SourceRun, features: list[Feature], rows: int) -> dict[str, Tensor]:
    """Up to `rows` rows of the run's data (first split that has them) as model inputs."""
    for split in ("test", "valid", "train"):
        directory = run.data / split
        files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
        for file in files:
            reader = pq.ParquetFile(file)
            for batch in reader.iter_batches(batch_size=rows, columns=[f.name for f in features]):
                if batch.num_rows >= 2:
                    return to_tensors(pa.Table.from_batches([batch]), features, str(file))
    raise ExportError(f"{run.data}: no split holds 2 rows to check the exported model on")


def _ranker_features(spec: FeatureSpec) -> list[Feature]:
    return [f for f in spec.features if set(f.inputs) & set(RANKER_INPUTS)]


def _write_snapshot(run: SourceRun, target: Path) -> dict[str, int]:
    """Spec, fitted pipeline (with vocabularies) and the user / item tables, as single files."""
    target.mkdir(parents=True)
    run.spec.save(target)
    copy_tree(run.data / layout.PIPELINE, target / layout.PIPELINE)
    rows = {}
    for source, name, key in (
        ("user_features", layout.USERS, run.spec.user_id),
        ("item_features", layout.ITEMS, run.spec.item_id),
    ):
        if not (run.data / source).is_dir():
            continue
        table = read_table(run.data / source)
        if key is not None and key in table.column_names:
            table = table.sort_by(key)
        pq.write_table(table, target / name)
        rows[name] = table.num_rows
    return rows


def _item_vectors(
    run: SourceRun, items: pa.Table, batch_size: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """The item tower's vectors of every row of `items`, computed in batches."""
    features = run.spec.for_input("item_tower")
    missing = [f.name for f in features if f.name not in items.column_names]
    if missing:
        raise ExportError(f"{run.data}/item_features lacks item-tower columns {missing}")
    t0 = time.perf_counter()
    parts = []
    with torch.no_grad():
        for start in range(0, items.num_rows, batch_size):
            chunk = items.slice(start, batch_size)
            batch = to_tensors(chunk, features, f"{run.data}/item_features")
            parts.append(run.model.item_tower(batch).float().numpy())
    vectors = np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
    return vectors, {"items": items.num_rows, "seconds": round(time.perf_counter() - t0, 3)}


def _interactions(run: SourceRun, items: pa.Table) -> np.ndarray:
    """Positive train interactions (rows when there is no label) of each row of `items`."""
    spec = run.spec
    columns = [spec.item_id] + ([spec.label] if spec.label else [])
    train = read_table(run.data / "train", columns=columns)
    ids = train[spec.item_id].to_numpy()
    if spec.label:
        ids = ids[train[spec.label].to_numpy() > 0.5]
    item_ids = items[spec.item_id].to_numpy()
    counts = np.bincount(ids, minlength=int(item_ids.max(initial=0)) + 1)
    return counts[item_ids].astype(np.int64)


def _retrieval_prior(
    settings: BlendSettings,
    run: SourceRun,
    users: pa.Table,
    items: pa.Table,
    vectors: np.ndarray,
    interactions: np.ndarray,
) -> tuple[Prior | None, dict[str, Any] | None]:
    """The index's popularity prior (recsys/export/prior.py): the configured beta, or the one
    with the best recall@k on the validation split by exact search; none at beta 0."""
    scale = scale_for(interactions)
    if settings.prior_beta is not None:
        beta, record = float(settings.prior_beta), {"chosen_on": "config"}
    elif not (run.data / settings.split).exists():
        log.warning(
            "no retrieval prior: %s has no %s/ split to choose it on", run.data, settings.split
        )
        return None, None
    else:
        beta, values, n_users = _choose_beta(settings, run, users, items, vectors, interactions)
        record = {
            "chosen_on": settings.split,
            "metric": f"recall@{settings.k}",
            "users": n_users,
            "values": {f"{b:g}": round(v, 6) for b, v in values.items()},
        }
        log.info(
            "retrieval prior beta %g (recall@%d on %s: %s)",
            beta,
            settings.k,
            settings.split,
            ", ".join(f"{b:g} {v:.4f}" for b, v in values.items()),
        )
    if beta == 0:
        return None, {"beta": 0.0, "scale": scale, **record}
    return Prior(beta=beta, scale=scale), {"beta": beta, "scale": scale, **record}


def _choose_beta(
    settings: BlendSettings,
    run: SourceRun,
    users: pa.Table,
    items: pa.Table,
    vectors: np.ndarray,
    interactions: np.ndarray,
) -> tuple[float, dict[float, float], int]:
    from recsys.evaluate import ranking_metrics, users_to_evaluate  # it reads bundles

    spec = run.spec
    row_of_user = {int(v): i for i, v in enumerate(users[spec.user_id].to_numpy())}
    known, positives, history, _ = users_to_evaluate(
        run.data,
        settings.split,
        spec,
        row_of_user,
        exclude_train=settings.exclude_train,
        max_users=settings.max_users,
        seed=settings.seed,
    )
    if not settings.exclude_train:
        history = {}
    if not known:
        return 0.0, {0.0: 0.0}, 0
    features = spec.for_input("user_tower")
    item_ids = items[spec.item_id].to_numpy()
    log_pop = np.log1p(interactions).astype(np.float32)
    k = min(settings.k, len(item_ids))
    hits: dict[float, list[float]] = {b: [] for b in BETAS}
    for start in range(0, len(known), 256):
        part = known[start : start + 256]
        batch = to_tensors(users.take([row_of_user[u] for u in part]), features, "users")
        with torch.no_grad():
            base = run.model.user_tower(batch).float().numpy() @ vectors.T  # B x N
        for row, u in enumerate(part):
            seen = history.get(u)
            if seen:
                base[row, np.isin(item_ids, list(seen))] = -np.inf
        for beta in BETAS:
            scores = base + beta * log_pop
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            targets = [positives[u] for u in part]
            hits[beta] += ranking_metrics(item_ids[top], targets, [k])[f"recall@{k}"]
    values = {b: float(np.mean(v)) for b, v in hits.items()}
    beta, values = choose_beta(lambda b: values[b])
    return beta, values, len(known)


def _user_sample(run: SourceRun, users: pa.Table, n: int, seed: int) -> np.ndarray:
    features = run.spec.for_input("user_tower")
    if n == 0 or users.num_rows == 0:
        return np.zeros((0, 1), np.float32)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(users.num_rows, size=min(n, users.num_rows), replace=False))
    batch = to_tensors(users.take(take), features, f"{run.data}/user_features")
    with torch.no_grad():
        return run.model.user_tower(batch).float().numpy()


def popularity(run: SourceRun, items: pa.Table) -> pa.Table:
    """Items of the training split by interactions (positive labels; rows if no label),
    then impressions (rows), then encoded id; with raw ids where the item table has them."""
    spec = run.spec
    key = spec.item_id
    columns = [key] + ([spec.label] if spec.label else [])
    train = read_table(run.data / "train", columns=columns)
    label = spec.label
    counted = train.group_by(key).aggregate([(key, "count")] + ([(label, "sum")] if label else []))
    impressions = counted[f"{key}_count"].cast(pa.int64())
    interactions = pc.cast(pc.round(counted[f"{label}_sum"]), pa.int64()) if label else impressions
    table = pa.table(
        {
            layout.ITEM_ID: counted[key].cast(pa.int64()),
            layout.INTERACTIONS: interactions,
            layout.IMPRESSIONS: impressions,
        }
    )
    table = table.filter(pc.greater(table[layout.INTERACTIONS], 0))
    raw = f"{key}_raw"
    if raw in items.column_names:
        ids = items.select([key, raw]).rename_columns([layout.ITEM_ID, layout.RAW_ID])
        table = table.join(ids, layout.ITEM_ID, join_type="left outer")
    return table.sort_by(
        [
            (layout.INTERACTIONS, "descending"),
            (layout.IMPRESSIONS, "descending"),
            (layout.ITEM_ID, "ascending"),
        ]
    )


def _run_record(run: SourceRun) -> dict[str, Any]:
    return {
        "run_dir": str(run.run_dir.resolve()),
        "model": type(run.model).__name__,
        "best_epoch": run.state.get("epoch", -1) + 1,
        "checkpoint_metrics": run.state.get("metrics", {}),
        "result": run.result,
        "config": run.config,
        "data": str(run.data),
    }


def export_bundle(settings: ExportSettings) -> dict[str, Any]:
    """Write the bundle; return its manifest."""
    t0 = time.perf_counter()
    check_export(settings)
    ranker = load_run(settings.ranker_run, "ranker")
    retrieval = load_run(settings.retrieval_run, "retrieval")
    if hasattr(ranker.model, "item_tower"):
        raise ExportError(
            f"ranker_run={settings.ranker_run} trained a retrieval model, not a ranker"
        )
    if not hasattr(retrieval.model, "user_tower") or not hasattr(retrieval.model, "item_tower"):
        raise ExportError(
            f"retrieval_run={settings.retrieval_run} trained {type(retrieval.model).__name__}, "
            "not a two-tower model"
        )
    if retrieval.spec.item_id is None:
        raise ExportError(f"{retrieval.data}: the feature spec names no item_id to index by")
    _check_data(ranker, ("user_features", "item_features"))
    _check_data(retrieval, ("user_features", "item_features", "train"))

    out = Path(settings.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        manifest = _write(settings, ranker, retrieval, tmp)
        write_json_atomic(tmp / layout.MANIFEST, manifest)
        manifest["blend"] = _blend_entry(settings.blend, tmp, retrieval)
        manifest["export_seconds"] = round(time.perf_counter() - t0, 2)
        write_json_atomic(tmp / layout.MANIFEST, manifest)
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(format_summary(manifest, out))
    return manifest


def _blend_entry(settings: BlendSettings, tmp: Path, retrieval: SourceRun) -> dict[str, Any]:
    """The manifest's `blend` entry: the configured weight, or the one with the best recall
    on the retrieval data's validation split, measured through the bundle just written."""
    if settings.weight is not None:
        return {"weight": float(settings.weight), "chosen_on": "config"}
    if not (retrieval.data / settings.split).exists():
        log.warning(
            "blend weight 0 (the ranker's order): %s has no %s/ split to choose it on",
            retrieval.data,
            settings.split,
        )
        return {"weight": 0.0, "chosen_on": f"none ({settings.split}/ missing)"}
    from recsys.evaluate import choose_blend_weight  # evaluation reads bundles; not the reverse

    return choose_blend_weight(load_bundle(tmp), retrieval.data, settings)


def _write(
    settings: ExportSettings, ranker: SourceRun, retrieval: SourceRun, tmp: Path
) -> dict[str, Any]:
    fmt = settings.format
    stages: dict[str, float] = {}
    t = time.perf_counter()

    # models
    ranker_file = file_name(layout.RANKER, fmt)
    features = _ranker_features(ranker.spec)
    example = _example(ranker, features, settings.example_rows)
    ranker_report = save_module(ranker.model, example, tmp / ranker_file, fmt)
    tower_file = file_name(layout.USER_TOWER, fmt)
    user_features = retrieval.spec.for_input("user_tower")
    example = _example(retrieval, user_features, settings.example_rows)
    tower_report = save_module(retrieval.model.user_tower, example, tmp / tower_file, fmt)
    stages["models"] = round(time.perf_counter() - t, 2)
    interrupts.pause_point("export")
    t = time.perf_counter()

    # snapshots
    tables = {
        "ranker": _write_snapshot(ranker, tmp / "ranker"),
        "retrieval": _write_snapshot(retrieval, tmp / "retrieval"),
    }
    stages["snapshots"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()

    # item vectors, index, id map
    items = pq.read_table(tmp / "retrieval" / layout.ITEMS)
    vectors, embed = _item_vectors(retrieval, items, settings.embed_batch_size)
    stages["item_vectors"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    users = pq.read_table(tmp / "retrieval" / layout.USERS)
    interactions = _interactions(retrieval, items)
    prior, prior_record = _retrieval_prior(
        settings.blend, retrieval, users, items, vectors, interactions
    )
    if prior is not None:
        vectors = prior.items(vectors, interactions)
    stages["retrieval_prior"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    index, params = build_index(vectors, settings.index)
    write_index(index, tmp / layout.INDEX)
    key = retrieval.spec.item_id
    ids = {layout.ROW: pa.array(np.arange(items.num_rows), pa.int64()), layout.ITEM_ID: items[key]}
    if f"{key}_raw" in items.column_names:
        ids[layout.RAW_ID] = items[f"{key}_raw"]
    pq.write_table(pa.table(ids), tmp / layout.ITEM_IDS)
    stages["index"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()

    # recall of the index against exact search, on a sample of users
    s = settings.index
    queries = _user_sample(retrieval, users, s.recall_users, s.seed)
    if prior is not None and len(queries):
        queries = prior.queries(queries)
    recall = recall_at_k(index, vectors, queries, s.recall_k) if len(queries) else None
    k = min(s.recall_k, len(vectors))
    log.info(
        "index %s over %d items: recall@%d vs exact search %s on %d users",
        params["type"],
        len(vectors),
        k,
        "n/a" if recall is None else f"{recall:.4f}",
        len(queries),
    )
    if recall is not None and recall < RECALL_TARGET:
        log.warning(
            "index %s: recall@%d %.4f is below the %.2f target: %s",
            params["type"],
            k,
            recall,
            RECALL_TARGET,
            recall_advice(params["type"]),
        )
    if recall is not None and s.min_recall is not None and recall < s.min_recall:
        raise ExportError(
            f"index {params['type']}: recall@{k} {recall:.4f} < index.min_recall "
            f"{s.min_recall}; raise ef_search / nprobe or use type=flat"
        )
    stages["recall_check"] = round(time.perf_counter() - t, 2)

    popular = popularity(retrieval, items)
    pq.write_table(popular, tmp / layout.POPULARITY)
    (tmp / layout.README).write_text(layout.readme(ranker_file, tower_file, fmt))

    files = {
        name: {"sha256": layout.sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
        for name in layout.bundle_files(tmp)
    }
    return {
        "format_version": layout.FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "export_config": _plain(settings),
        "format": fmt,
        "models": {
            "ranker": _module_record(ranker_report, features),
            "user_tower": _module_record(tower_report, user_features),
        },
        "index": {
            **params,
            "file": layout.INDEX,
            "id_map": layout.ITEM_IDS,
            "embed_seconds": embed["seconds"],
            "recall": {"k": k, "users": len(queries), "recall": recall, "target": RECALL_TARGET},
        },
        "tables": tables,
        "popularity": {"file": layout.POPULARITY, "items": popular.num_rows},
        **({"retrieval_prior": prior_record} if prior_record else {}),
        "runs": {"ranker": _run_record(ranker), "retrieval": _run_record(retrieval)},
        "stages": stages,
        "files": files,
    }


def recall_advice(index_type: str) -> str:
    """What raises an index's recall against exact search, by index type."""
    if index_type == "ivfpq":
        return (
            "ivfpq trades recall for memory (PQ codes); set index.refine (e.g. 10) to re-score "
            "with exact vectors, raise index.nprobe / index.pq_m, or use type=hnsw"
        )
    if index_type == "hnsw":
        return "raise index.ef_search (query time) or index.ef_construction / index.hnsw_m"
    return "an exact index should not miss; check the vectors for NaN"


def _module_record(report: ModuleReport, features: list[Feature]) -> dict[str, Any]:
    return {**asdict(report), "inputs": [f.name for f in features]}


def _plain(settings: ExportSettings) -> dict[str, Any]:
    return asdict(settings)


def format_summary(manifest: dict[str, Any], out: Path) -> str:
    index = manifest["index"]
    recall = index["recall"]
    size = sum(f["bytes"] for f in manifest["files"].values())
    value = recall["recall"]
    target = recall.get("target", RECALL_TARGET)  # bundles from before the target was stored
    lines = [
        f"exported bundle {out} ({size / 1e6:.1f} MB, {len(manifest['files']) + 1} files) "
        f"in {manifest.get('export_seconds', 0):.1f} s",
        f"  ranker {manifest['models']['ranker']['file']} "
        f"({manifest['runs']['ranker']['model']}, passes "
        f"{'+'.join(manifest['models']['ranker']['passes'])}), user tower "
        f"{manifest['models']['user_tower']['file']}",
        f"  index {index['type']} over {index['items']:,} items (dim {index['dim']}): "
        f"recall@{recall['k']} vs exact "
        + ("n/a" if value is None else f"{value:.4f}")
        + f" on {recall['users']} users",
    ]
    if value is not None and value < target:
        lines.append(
            f"  WARNING: recall below the {target:.2f} target: {recall_advice(index['type'])}"
        )
    return "\n".join(lines)
