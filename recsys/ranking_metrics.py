"""Per-user ranking metrics of top-K lists, and per-user AUC (GAUC), in numpy.

    recall@K  = |top K ∩ targets| / |targets|
    ndcg@K    = DCG@K / ideal DCG@K (binary gains, 1 / log2(rank + 1) for a hit at rank
                1..K; ideal = min(|targets|, K) hits on top)
    hitrate@K = 1 if top K holds any target, else 0

each per user, as torchmetrics' RetrievalRecall / RetrievalNormalizedDCG / RetrievalHitRate
compute them per query when every target is among the scored items (tests hold them equal).
A target that is not in the list at all still counts in recall's denominator: an item the
model never retrieves is a miss, not a smaller question.

GAUC (Zhou et al. 2018, the per-user AUC of the DIN paper): each user's AUC over their rows,
ties counting one half, averaged with each user's row count as weight; users whose rows are
all positive or all negative have no AUC and are left out (of the mean and of the weights).
"""

from __future__ import annotations

import numpy as np

METRICS = ("recall", "ndcg", "hitrate")


def _dcg_discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def ranking_metrics(
    ranked: np.ndarray, targets: list[set[int]], ks: list[int]
) -> dict[str, list[float]]:
    """Per-user `recall@K`, `ndcg@K` and `hitrate@K` of `ranked` (U x N item ids, best first;
    -1 pads a short list) against each user's non-empty `targets`."""
    out: dict[str, list[float]] = {}
    discounts = _dcg_discounts(max(ks))
    for k in ks:
        recalls, ndcgs, hit_rates = [], [], []
        for row, wanted in zip(ranked, targets, strict=True):
            if not wanted:
                raise ValueError("every user needs at least one target item")
            top = row[:k]
            hits = np.fromiter((int(i) in wanted for i in top), bool, count=len(top))
            recalls.append(float(hits.sum() / len(wanted)))
            ideal = discounts[: min(len(wanted), k)].sum()
            ndcgs.append(float((hits * discounts[: len(hits)]).sum() / ideal))
            hit_rates.append(float(hits.any()))
        out[f"recall@{k}"] = recalls
        out[f"ndcg@{k}"] = ndcgs
        out[f"hitrate@{k}"] = hit_rates
    return out


def mean_metrics(ranked: np.ndarray, targets: list[set[int]], ks: list[int]) -> dict[str, float]:
    """`ranking_metrics` averaged over users (every user weighs the same)."""
    return {n: float(np.mean(v)) for n, v in ranking_metrics(ranked, targets, ks).items()}


def group_auc(groups: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """(GAUC, users counted) of `scores` against binary `labels` (> 0.5 is positive), one
    group per distinct value of `groups`; NaN and 0 when no group has both classes.

    Vectorised: one sort by (group, score), then the Mann-Whitney rank sum per group with
    tied scores given their average rank, as roc_auc_score does."""
    groups = np.asarray(groups)
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels) > 0.5
    if len(groups) == 0:
        return float("nan"), 0
    order = np.lexsort((scores, groups))
    g, s, y = groups[order], scores[order], positive[order]
    starts_group = np.r_[True, g[1:] != g[:-1]]
    group = np.cumsum(starts_group) - 1
    first = np.flatnonzero(starts_group)
    rank = np.arange(len(g)) - first[group] + 1.0  # 1-based rank inside the group
    starts_tie = starts_group | np.r_[True, s[1:] != s[:-1]]
    tie = np.cumsum(starts_tie) - 1
    rank = (np.bincount(tie, weights=rank) / np.bincount(tie))[tie]
    rows = np.bincount(group).astype(np.float64)
    pos = np.bincount(group, weights=y.astype(np.float64))
    neg = rows - pos
    both = (pos > 0) & (neg > 0)
    if not both.any():
        return float("nan"), 0
    rank_sum = np.bincount(group, weights=rank * y)
    auc = (rank_sum[both] - pos[both] * (pos[both] + 1) / 2) / (pos[both] * neg[both])
    return float(np.average(auc, weights=rows[both])), int(both.sum())
