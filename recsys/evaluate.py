"""Offline evaluation of a bundle's full recall + rank path (`python -m recsys.evaluate`):

    python -m recsys.evaluate bundle=bundles/demo data=data/recsys2021_two_tower k=[10,50]

For every user of the processed `split` (default test) with held-out positive interactions
(label 1; every row when the data has no label) whom the bundle knows: the exported user tower
embeds the user's snapshot row, Faiss returns the top `candidates` items, and the exported
ranker re-scores them (user and item features from the ranker's snapshot, looked up by raw id;
context features, which only a live request carries, are left missing = 0). Reported at each
K, as the mean over users:

    recall@K = |top K ∩ positives| / |positives|
    ndcg@K   = DCG@K / ideal DCG@K (binary gains, ideal = min(|positives|, K) hits on top)

for `rank` (recall + rank, what serving returns), `retrieval` (Faiss order, no ranker) and
`popularity` (the bundle's cold-start list, the same for everyone). Written as JSON to `out`.
`data` must be the processed data the two-tower run was trained on (its encodings); null takes
the path recorded in the bundle's manifest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pyarrow as pa
import torch
from omegaconf import DictConfig

from recsys import interrupts
from recsys.cli import run_task
from recsys.config import CONF_DIR, register_configs
from recsys.errors import RecsysError
from recsys.export import layout
from recsys.export.reader import Bundle, load_bundle
from recsys.export.tensors import read_table
from recsys.features.feature_spec import FEATURE_SPEC_FILE, FeatureSpec
from recsys.provenance import write_json_atomic

log = logging.getLogger(__name__)
register_configs()

METHODS = ("rank", "retrieval", "popularity")


class EvaluateError(RecsysError, ValueError):
    """Settings or data that cannot be evaluated; the message names the setting or file."""


@dataclass
class EvaluateSettings:
    bundle: str
    data: str | None = None
    split: str = "test"
    k: list[int] = field(default_factory=lambda: [10, 50])
    candidates: int = 200
    max_users: int | None = 2000
    batch_size: int = 256
    seed: int = 0
    out: str | None = None

    def validate(self) -> None:
        if not self.k or min(self.k) < 1:
            raise EvaluateError(f"k must list values >= 1, got {self.k}")
        if self.candidates < max(self.k):
            raise EvaluateError(f"candidates ({self.candidates}) must be >= max(k) {max(self.k)}")
        if self.batch_size < 1 or (self.max_users is not None and self.max_users < 1):
            raise EvaluateError("batch_size and max_users must be >= 1")


def _dcg_discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def ranking_metrics(
    ranked: np.ndarray, positives: list[set[int]], ks: list[int]
) -> dict[str, list[float]]:
    """Per-user recall@K and ndcg@K of `ranked` (U x N item ids, best first)."""
    out: dict[str, list[float]] = {}
    discounts = _dcg_discounts(max(ks))
    for k in ks:
        recalls, ndcgs = [], []
        for row, pos in zip(ranked, positives, strict=True):
            hits = np.fromiter((int(i) in pos for i in row[:k]), bool, count=min(k, len(row)))
            recalls.append(hits.sum() / len(pos))
            ideal = discounts[: min(len(pos), k)].sum()
            ndcgs.append(float((hits * discounts[: len(hits)]).sum() / ideal))
        out[f"recall@{k}"] = recalls
        out[f"ndcg@{k}"] = ndcgs
    return out


def held_out_positives(data: Path, split: str, spec: FeatureSpec) -> dict[int, set[int]]:
    """{encoded user id: encoded item ids} of the split's positive rows (known ids only)."""
    if spec.user_id is None or spec.item_id is None:
        raise EvaluateError(f"{data}/{FEATURE_SPEC_FILE} names no user_id and item_id")
    columns = [spec.user_id, spec.item_id] + ([spec.label] if spec.label else [])
    table = read_table(data / split, columns=columns)
    users = table[spec.user_id].to_numpy()
    items = table[spec.item_id].to_numpy()
    keep = (users >= 2) & (items >= 2)
    if spec.label:
        keep &= table[spec.label].to_numpy() > 0.5
    positives: dict[int, set[int]] = {}
    for u, i in zip(users[keep].tolist(), items[keep].tolist(), strict=True):
        positives.setdefault(u, set()).add(i)
    return positives


def _context_zeros(feature: Any, n: int) -> pa.Array:
    if feature.kind == "multi_categorical":
        return pa.array([[0] * (feature.max_len or 1)] * n, pa.list_(pa.int64()))
    if feature.kind == "continuous":
        return pa.array(np.zeros(n, np.float32))
    return pa.array(np.zeros(n, np.int64))


def rank_candidates(bundle: Bundle, user_raw: list[str], item_raw: np.ndarray) -> np.ndarray:
    """Ranker logits (U x C) of each user's candidates, by raw ids (features from the ranker
    snapshot; a raw id the ranker does not know gets missing features; context missing)."""
    snap = bundle.ranker_features
    spec = snap.spec
    u, c = item_raw.shape
    users, _ = snap.rows("user", user_raw)
    users = users.take(np.repeat(np.arange(u), c))
    items, _ = snap.rows("item", pa.array(item_raw.reshape(-1).tolist(), pa.string()))
    columns = {}
    for name in bundle.ranker_inputs:
        feature = spec[name]
        if feature.entity == "user" and name in users.column_names:
            columns[name] = users[name]
        elif feature.entity == "item" and name in items.column_names:
            columns[name] = items[name]
        else:
            columns[name] = _context_zeros(feature, u * c)
    batch = bundle.ranker_batch(pa.table(columns))
    with torch.no_grad():
        return bundle.ranker(batch).float().numpy().reshape(u, c)


def _trained_on(bundle: Bundle) -> str:
    """The processed data the bundle's two-tower run was trained on, from its manifest."""
    runs = bundle.manifest.get("runs")
    retrieval = runs.get("retrieval") if isinstance(runs, dict) else None
    data = retrieval.get("data") if isinstance(retrieval, dict) else None
    if not isinstance(data, str) or not data:
        raise EvaluateError(
            f"{bundle.path / layout.MANIFEST} lacks 'runs.retrieval.data' (the two-tower run's "
            "processed data); pass data=<processed dir>"
        )
    return data


def evaluate_bundle(settings: EvaluateSettings) -> dict[str, Any]:
    t0 = time.perf_counter()
    settings.validate()
    bundle = load_bundle(settings.bundle)
    spec = bundle.retrieval_features.spec
    data = Path(settings.data or _trained_on(bundle))
    if not (data / FEATURE_SPEC_FILE).is_file():
        raise EvaluateError(f"data={data} holds no {FEATURE_SPEC_FILE}")
    if FeatureSpec.load(data) != spec:
        raise EvaluateError(
            f"data={data}: its feature spec differs from the bundle's retrieval spec (other "
            "encodings); pass the processed data the two-tower run was trained on"
        )
    positives = held_out_positives(data, settings.split, spec)
    user_table = bundle.retrieval_features.users
    key = spec.user_id
    row_of_user = {int(v): i for i, v in enumerate(user_table[key].to_numpy())}
    known = sorted(u for u in positives if u in row_of_user)
    skipped = len(positives) - len(known)
    rng = np.random.default_rng(settings.seed)
    if settings.max_users is not None and len(known) > settings.max_users:
        known = sorted(rng.choice(known, settings.max_users, replace=False).tolist())
    if not known:
        raise EvaluateError(f"{data}/{settings.split}: no known user has a positive interaction")

    item_ids = bundle.item_ids[layout.ITEM_ID].to_numpy()
    raw_ids = np.asarray(bundle.item_ids[layout.RAW_ID].to_pylist(), dtype=object)
    popular = bundle.popularity[layout.ITEM_ID].to_numpy()[: max(settings.k)]
    k_max = max(settings.k)
    per_user: dict[str, dict[str, list[float]]] = {m: {} for m in METHODS}
    n_candidates = min(settings.candidates, bundle.index.ntotal)
    for start in range(0, len(known), settings.batch_size):
        batch_users = known[start : start + settings.batch_size]
        rows = user_table.take([row_of_user[u] for u in batch_users])
        vectors = bundle.user_vectors(rows)
        _, found = bundle.index.search(np.ascontiguousarray(vectors), n_candidates)
        valid = found >= 0
        found = np.where(valid, found, 0)
        candidates = item_ids[found]
        user_raw = rows[f"{key}_raw"].to_pylist()
        scores = rank_candidates(bundle, user_raw, raw_ids[found])
        scores = np.where(valid, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k_max]
        ranked = {
            "rank": np.take_along_axis(candidates, order, axis=1),
            "retrieval": np.where(valid, candidates, -1)[:, :k_max],
            "popularity": np.tile(popular, (len(batch_users), 1)),
        }
        targets = [positives[u] for u in batch_users]
        for method, items in ranked.items():
            for name, values in ranking_metrics(items, targets, settings.k).items():
                per_user[method].setdefault(name, []).extend(values)
        interrupts.pause_point("evaluate")
    metrics = {m: {n: float(np.mean(v)) for n, v in per_user[m].items()} for m in METHODS}
    report = {
        "bundle": str(Path(settings.bundle).resolve()),
        "data": str(data),
        "split": settings.split,
        "users": len(known),
        "users_unknown_to_bundle": skipped,
        "positives": int(sum(len(positives[u]) for u in known)),
        "candidates": n_candidates,
        "k": list(settings.k),
        "index": bundle.manifest["index"]["type"],
        "context_features": "missing (0): offline rows carry no request context",
        "metrics": metrics,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if settings.out:
        write_json_atomic(Path(settings.out), report)
    log.info(format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    names = list(next(iter(report["metrics"].values())))
    lines = [
        f"evaluated {report['bundle']} on {report['data']}/{report['split']}: "
        f"{report['users']:,} users, {report['positives']:,} positives, "
        f"{report['candidates']} candidates ({report['index']})",
        f"  {'method':<11}" + "".join(f"{n:>12}" for n in names),
    ]
    for method, values in report["metrics"].items():
        lines.append(f"  {method:<11}" + "".join(f"{values[n]:>12.4f}" for n in names))
    return "\n".join(lines)


def settings_from_config(cfg: DictConfig) -> EvaluateSettings:
    return EvaluateSettings(
        bundle=str(cfg.bundle),
        data=None if cfg.data is None else str(cfg.data),
        split=str(cfg.split),
        k=[int(k) for k in cfg.k],
        candidates=int(cfg.candidates),
        max_users=None if cfg.max_users is None else int(cfg.max_users),
        batch_size=int(cfg.batch_size),
        seed=int(cfg.seed),
        out=str(cfg.out),
    )


def evaluate_from_config(cfg: DictConfig) -> dict[str, Any]:
    report = evaluate_bundle(settings_from_config(cfg))
    print(f"report: {cfg.out}")
    return report


def check_evaluate(cfg: DictConfig) -> None:
    settings_from_config(cfg).validate()
    if not Path(cfg.bundle).is_dir():
        raise EvaluateError(f"bundle={cfg.bundle} is not a directory")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_task(evaluate_from_config, cfg, check=check_evaluate)


if __name__ == "__main__":
    main()
