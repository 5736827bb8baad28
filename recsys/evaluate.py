"""Offline evaluation of a bundle's full recall + rank path (`python -m recsys.evaluate`):

    python -m recsys.evaluate bundle=bundles/demo data=data/recsys2021_two_tower k=[10,50]

For every user of the processed `split` (default test) with held-out positive interactions
(label 1; every row when the data has no label) whom the bundle knows: the exported user tower
embeds the user's snapshot row, Faiss returns the top `candidates` items, and the exported
ranker re-scores them (user and item features from the ranker's snapshot, looked up by raw id;
context features, which only a live request carries, are left missing = 0). Reported at each
K, as the mean over users, recall@K, ndcg@K and hitrate@K (recsys/ranking_metrics.py) over two
sets of targets: `metrics`, the user's held-out positives (label 1), and
`metrics_all_held_out`, every item of the user's held-out rows whatever their label (the
protocol of papers that count any held-out interaction as relevant; on the same users, those
with a held-out positive). Both for `blend` (what serving returns: the two-tower's
candidates ordered by the bundle's blend of retrieval and ranker scores,
recsys/export/blend.py), `rank` (the ranker's order alone), `retrieval` (Faiss order, no
ranker), and two baselines on the same users: `popularity` (the
items with most positive train interactions) and `item_knn` (recsys/baselines.py). With
`exclude_train` (the default) each user's positive train items are left out of every list and
of the held-out targets. Written as JSON to `out`.
`data` must be the processed data the two-tower run was trained on (its encodings); null takes
the path recorded in the bundle's manifest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pyarrow as pa
import torch
from omegaconf import DictConfig

from recsys import interrupts
from recsys.baselines import item_knn_top, item_neighbours, popularity_top
from recsys.cli import run_task
from recsys.config import CONF_DIR, register_configs
from recsys.errors import RecsysError
from recsys.export import layout
from recsys.export.blend import Blend, BlendSettings, choose_weight
from recsys.export.reader import Bundle, load_bundle
from recsys.export.tensors import read_table
from recsys.features.feature_spec import FEATURE_SPEC_FILE, FeatureSpec
from recsys.provenance import write_json_atomic
from recsys.ranking_metrics import mean_metrics
from recsys.ranking_metrics import ranking_metrics as ranking_metrics  # recsys.export.writer's

log = logging.getLogger(__name__)
register_configs()


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
    exclude_train: bool = True
    knn_neighbours: int = 100

    def validate(self) -> None:
        if not self.k or min(self.k) < 1:
            raise EvaluateError(f"k must list values >= 1, got {self.k}")
        if self.candidates < max(self.k):
            raise EvaluateError(f"candidates ({self.candidates}) must be >= max(k) {max(self.k)}")
        if self.batch_size < 1 or (self.max_users is not None and self.max_users < 1):
            raise EvaluateError("batch_size and max_users must be >= 1")
        if self.knn_neighbours < 1:
            raise EvaluateError(f"knn_neighbours must be >= 1, got {self.knn_neighbours}")


def held_out_positives(
    data: Path, split: str, spec: FeatureSpec, positives_only: bool = True
) -> dict[int, set[int]]:
    """{encoded user id: encoded item ids} of the split's positive rows (every row with
    `positives_only=False` or when the data has no label; known ids only)."""
    if spec.user_id is None or spec.item_id is None:
        raise EvaluateError(f"{data}/{FEATURE_SPEC_FILE} names no user_id and item_id")
    columns = [spec.user_id, spec.item_id] + ([spec.label] if spec.label else [])
    table = read_table(data / split, columns=columns)
    users = table[spec.user_id].to_numpy()
    items = table[spec.item_id].to_numpy()
    keep = (users >= 2) & (items >= 2)
    if spec.label and positives_only:
        keep &= table[spec.label].to_numpy() > 0.5
    positives: dict[int, set[int]] = {}
    for u, i in zip(users[keep].tolist(), items[keep].tolist(), strict=True):
        positives.setdefault(u, set()).add(i)
    return positives


def users_to_evaluate(
    data: Path,
    split: str,
    spec: FeatureSpec,
    row_of_user: Mapping[int, int],
    *,
    exclude_train: bool,
    max_users: int | None,
    seed: int,
) -> tuple[list[int], dict[int, set[int]], dict[int, set[int]], int]:
    """The users of `data/split` with held-out positives whom `row_of_user` knows (a seeded
    sample of at most `max_users`): (users, positives, positive train items, users skipped).
    With `exclude_train` the train items are taken out of the positives first."""
    positives = held_out_positives(data, split, spec)
    history = held_out_positives(data, "train", spec)
    if exclude_train:
        positives = {u: p - history.get(u, set()) for u, p in positives.items()}
        positives = {u: p for u, p in positives.items() if p}
    known = sorted(u for u in positives if u in row_of_user)
    skipped = len(positives) - len(known)
    if max_users is not None and len(known) > max_users:
        rng = np.random.default_rng(seed)
        known = sorted(rng.choice(known, max_users, replace=False).tolist())
    return known, positives, history, skipped


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


@dataclass
class Candidates:
    """Each evaluated user's recalled candidates, as serving gets them, with both scores."""

    data: Path
    users: list[int]  # encoded user ids
    targets: list[set[int]]  # their held-out positive items (encoded)
    items: np.ndarray  # U x C encoded item ids, best retrieval score first (-1: none)
    retrieval: np.ndarray  # U x C inner products (-inf: none)
    ranker: np.ndarray  # U x C ranker logits (-inf: none)
    skipped: int  # users with positives whom the bundle does not know
    history: list[set[int]] = field(default_factory=list)  # their positive train items
    excluded: bool = False  # `history` left out of candidates and targets
    held_out: list[set[int]] = field(default_factory=list)  # all their held-out items


def recall_candidates(
    bundle: Bundle,
    data: str | Path | None,
    split: str,
    *,
    candidates: int,
    max_users: int | None,
    batch_size: int,
    seed: int,
    exclude_train: bool = False,
) -> Candidates:
    """Recall `candidates` items for (a seeded sample of at most `max_users`) users with
    positives in `data/split`, score them with the ranker: what serving does per request.

    With `exclude_train`, each user's positive train items are left out of the candidates
    (as a request's `exclude_item_ids`) and of the held-out positives (they cannot be hit);
    users with no other positive are not evaluated."""
    spec = bundle.retrieval_features.spec
    data = Path(data or _trained_on(bundle))
    if not (data / FEATURE_SPEC_FILE).is_file():
        raise EvaluateError(f"data={data} holds no {FEATURE_SPEC_FILE}")
    if FeatureSpec.load(data) != spec:
        raise EvaluateError(
            f"data={data}: its feature spec differs from the bundle's retrieval spec (other "
            "encodings); pass the processed data the two-tower run was trained on"
        )
    if not (data / split).exists():
        raise EvaluateError(f"data={data} has no {split}/ split")
    user_table = bundle.retrieval_features.users
    key = spec.user_id
    row_of_user = {int(v): i for i, v in enumerate(user_table[key].to_numpy())}
    known, positives, history, skipped = users_to_evaluate(
        data, split, spec, row_of_user, exclude_train=exclude_train, max_users=max_users, seed=seed
    )
    if not known:
        raise EvaluateError(f"{data}/{split}: no known user has a positive interaction")
    every_row = held_out_positives(data, split, spec, positives_only=False)
    left_out = history if exclude_train else {}
    held_out = [every_row[u] - left_out.get(u, set()) for u in known]

    item_ids = bundle.item_ids[layout.ITEM_ID].to_numpy()
    raw_ids = np.asarray(bundle.item_ids[layout.RAW_ID].to_pylist(), dtype=object)
    n = min(candidates, bundle.index.ntotal)
    items, retrieval, ranker = [], [], []
    for start in range(0, len(known), batch_size):
        batch_users = known[start : start + batch_size]
        rows = user_table.take([row_of_user[u] for u in batch_users])
        vectors = bundle.user_vectors(rows)
        seen = [history.get(u, set()) if exclude_train else set() for u in batch_users]
        wanted = min(n + max(map(len, seen)), bundle.index.ntotal)
        inner, found = bundle.index.search(bundle.query_vectors(vectors), wanted)
        if exclude_train:
            inner, found = _without(inner, found, item_ids, seen, n)
        valid = found >= 0
        found = np.where(valid, found, 0)
        scores = rank_candidates(bundle, rows[f"{key}_raw"].to_pylist(), raw_ids[found])
        items.append(np.where(valid, item_ids[found], -1))
        retrieval.append(np.where(valid, inner, -np.inf))
        ranker.append(np.where(valid, scores, -np.inf))
        interrupts.pause_point("evaluate")
    return Candidates(
        data=data,
        users=known,
        targets=[positives[u] for u in known],
        items=np.concatenate(items),
        retrieval=np.concatenate(retrieval),
        ranker=np.concatenate(ranker),
        skipped=skipped,
        history=[history.get(u, set()) for u in known],
        excluded=exclude_train,
        held_out=held_out,
    )


def _without(
    inner: np.ndarray, rows: np.ndarray, item_ids: np.ndarray, seen: list[set[int]], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` search results per user whose item is not in that user's `seen`."""
    out_inner = np.full((len(seen), n), -np.inf, inner.dtype)
    out_rows = np.full((len(seen), n), -1, rows.dtype)
    for u, skip in enumerate(seen):
        keep = rows[u] >= 0
        if skip:
            keep &= ~np.isin(item_ids[np.maximum(rows[u], 0)], list(skip))
        kept = np.flatnonzero(keep)[:n]
        out_inner[u, : len(kept)] = inner[u, kept]
        out_rows[u, : len(kept)] = rows[u, kept]
    return out_inner, out_rows


def ranked_by(c: Candidates, rule: Blend, k: int) -> np.ndarray:
    """Each user's top `k` candidates (U x k) by the blend of retrieval and ranker scores
    (recsys.export.blend: weight 1 = retrieval order, 0 = the ranker's)."""
    if rule.weight == 1.0:  # the Faiss order itself (ties as Faiss broke them)
        return c.items[:, :k]
    scores = rule.scores(c.retrieval, c.ranker)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(c.items, order, axis=1)


def choose_blend_weight(
    bundle: Bundle, data: str | Path | None, settings: BlendSettings
) -> dict[str, Any]:
    """The blend weight with the best recall@k on the validation split (the manifest's
    `blend` entry: weight, split, k, users and every weight's recall)."""
    c = recall_candidates(
        bundle,
        data,
        settings.split,
        candidates=settings.candidates,
        max_users=settings.max_users,
        batch_size=64,
        seed=settings.seed,
        exclude_train=settings.exclude_train,
    )
    name = f"recall@{settings.k}"
    scales = Blend.fitted(0.0, c.retrieval, c.ranker)

    def recall_at(weight: float) -> float:
        rule = replace(scales, weight=weight)
        return mean_metrics(ranked_by(c, rule, settings.k), c.targets, [settings.k])[name]

    weight, values = choose_weight(recall_at)
    log.info(
        "blend weight %.1f (%s on %s: %s)",
        weight,
        name,
        settings.split,
        ", ".join(f"{w:.1f} {v:.4f}" for w, v in values.items()),
    )
    return {
        **asdict(replace(scales, weight=weight)),
        "chosen_on": settings.split,
        "metric": name,
        "users": len(c.users),
        "candidates": int(c.items.shape[1]),
        "values": {f"{w:.1f}": round(v, 6) for w, v in values.items()},
    }


def evaluate_bundle(settings: EvaluateSettings) -> dict[str, Any]:
    t0 = time.perf_counter()
    settings.validate()
    bundle = load_bundle(settings.bundle)
    c = recall_candidates(
        bundle,
        settings.data,
        settings.split,
        candidates=settings.candidates,
        max_users=settings.max_users,
        batch_size=settings.batch_size,
        seed=settings.seed,
        exclude_train=settings.exclude_train,
    )
    k_max = max(settings.k)
    rule = Blend.of_manifest(bundle.manifest)
    spec = bundle.retrieval_features.spec
    train = read_table(c.data / "train", columns=[spec.user_id, spec.item_id])
    users, items = train[spec.user_id].to_numpy(), train[spec.item_id].to_numpy()
    if spec.label:
        positive = read_table(c.data / "train", columns=[spec.label])[spec.label].to_numpy() > 0.5
        users, items = users[positive], items[positive]
    exclude = c.history if c.excluded else None
    neighbour_ids, neighbour_sims = item_neighbours(
        users, items, int(spec[spec.item_id].size), settings.knn_neighbours
    )
    ranked = {
        "blend": ranked_by(c, rule, k_max),
        "rank": ranked_by(c, Blend(weight=0.0), k_max),
        "retrieval": ranked_by(c, Blend(weight=1.0), k_max),
        "popularity": popularity_top(items, k_max, len(c.users), exclude),
        "item_knn": item_knn_top(c.history, neighbour_ids, neighbour_sims, k_max, exclude),
    }
    metrics = {m: mean_metrics(items, c.targets, settings.k) for m, items in ranked.items()}
    every = {m: mean_metrics(items, c.held_out, settings.k) for m, items in ranked.items()}
    report = {
        "bundle": str(Path(settings.bundle).resolve()),
        "data": str(c.data),
        "split": settings.split,
        "users": len(c.users),
        "users_unknown_to_bundle": c.skipped,
        "positives": int(sum(len(t) for t in c.targets)),
        "held_out_items": int(sum(len(t) for t in c.held_out)),
        "candidates": int(c.items.shape[1]),
        "k": list(settings.k),
        "index": bundle.manifest["index"]["type"],
        "blend_weight": rule.weight,
        "train_items_excluded": c.excluded,
        "context_features": "missing (0): offline rows carry no request context",
        "metrics": metrics,  # targets: the held-out positives
        "metrics_all_held_out": every,  # targets: every held-out item of the same users
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if settings.out:
        write_json_atomic(Path(settings.out), report)
    log.info(format_report(report))
    return report


def recall_headline(report: dict[str, Any]) -> str:
    """Recall at the largest K of the served path next to its stages and popularity, saying
    in words when the served path loses to one of them."""
    k = max(report["k"])
    name = f"recall@{k}"
    m = {method: values[name] for method, values in report["metrics"].items()}
    text = (
        f"served (blend {report.get('blend_weight', 0.0):.1f}) {m['blend']:.4f}, "
        f"recall+rank {m['rank']:.4f}, two-tower recall {m['retrieval']:.4f}, "
        f"popularity {m['popularity']:.4f}"
    )
    baselines = ("retrieval", "popularity", "item_knn")
    text += f", item-kNN {m['item_knn']:.4f}" if "item_knn" in m else ""
    losses = [other for other in baselines if other in m and m["blend"] < m[other]]
    if losses:
        text += f"; the served path is BELOW {' and '.join(losses)}"
    return text


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"evaluated {report['bundle']} on {report['data']}/{report['split']}: "
        f"{report['users']:,} users, {report['positives']:,} positives, "
        f"{report['candidates']} candidates ({report['index']})",
    ]
    tables = [("positives", "metrics"), ("all held-out items", "metrics_all_held_out")]
    for title, key in tables:
        if key not in report:
            continue
        names = list(next(iter(report[key].values())))
        lines.append(f"  targets: {title}")
        lines.append(f"  {'method':<11}" + "".join(f"{n:>12}" for n in names))
        for method, values in report[key].items():
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
        exclude_train=bool(cfg.exclude_train),
        knn_neighbours=int(cfg.knn_neighbours),
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
