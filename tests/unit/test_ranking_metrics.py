"""Ranking metrics (recsys/ranking_metrics.py) against torchmetrics' retrieval metrics and a
brute-force GAUC; the training loop's GAUC (recsys/train/metrics.py)."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torchmetrics.classification import BinaryAUROC
from torchmetrics.retrieval import RetrievalHitRate, RetrievalNormalizedDCG, RetrievalRecall

from recsys.evaluate import held_out_positives
from recsys.ranking_metrics import group_auc, mean_metrics, ranking_metrics
from recsys.train.metrics import RankerMetrics
from tests.helpers.processed_data import spec as processed_spec
from tests.helpers.processed_data import write_processed

REFERENCE = {"recall": RetrievalRecall, "ndcg": RetrievalNormalizedDCG, "hitrate": RetrievalHitRate}


def _case(seed: int, users: int = 40, items: int = 30) -> tuple[np.ndarray, list[set[int]]]:
    """Distinct random scores (U x I) and 1..8 target items per user."""
    rng = np.random.default_rng(seed)
    scores = rng.permutation(users * items).reshape(users, items).astype(np.float64)
    targets = [
        set(rng.choice(items, rng.integers(1, 9), replace=False).tolist()) for _ in range(users)
    ]
    return scores, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 5, 10, 30])
def test_each_metric_equals_torchmetrics_retrieval_metric(seed: int, k: int) -> None:
    scores, targets = _case(seed)
    ranked = np.argsort(-scores, axis=1)
    ours = mean_metrics(ranked, targets, [k])
    users, items = scores.shape
    relevant = torch.zeros(users, items, dtype=torch.bool)
    for u, wanted in enumerate(targets):
        relevant[u, list(wanted)] = True
    indexes = torch.arange(users).repeat_interleave(items)
    for name, metric in REFERENCE.items():
        expected = metric(top_k=k)(
            torch.from_numpy(scores).reshape(-1), relevant.reshape(-1), indexes
        )
        assert ours[f"{name}@{k}"] == pytest.approx(float(expected), abs=1e-6), name


def test_a_hand_made_list() -> None:
    # user 0: targets 7 and 9; list 9 (hit at rank 1), 3, 7 (hit at rank 3), 5
    # user 1: target 4, not in the list at all (still counted: recall 0)
    ranked = np.array([[9, 3, 7, 5], [1, 2, 3, -1]])
    per_user = ranking_metrics(ranked, [{7, 9}, {4}], [2, 4])
    assert per_user["recall@2"] == [0.5, 0.0] and per_user["recall@4"] == [1.0, 0.0]
    assert per_user["hitrate@2"] == [1.0, 0.0] and per_user["hitrate@4"] == [1.0, 0.0]
    ideal = 1 + 1 / np.log2(3)
    assert per_user["ndcg@2"] == pytest.approx([1 / ideal, 0.0])
    assert per_user["ndcg@4"] == pytest.approx([(1 + 1 / np.log2(4)) / ideal, 0.0])
    with pytest.raises(ValueError, match="at least one target"):
        ranking_metrics(ranked, [{7}, set()], [2])


def _gauc_brute_force(groups: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> float:
    """Every (positive, negative) pair of each user: 1 when ordered right, 1/2 when tied."""
    total, weight = 0.0, 0
    for g in np.unique(groups):
        s, y = scores[groups == g], labels[groups == g] > 0.5
        pos, neg = s[y], s[~y]
        if len(pos) == 0 or len(neg) == 0:
            continue
        pairs = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        total += pairs.mean() * len(s)
        weight += len(s)
    return total / weight


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_gauc_equals_brute_force_with_ties_and_one_class_users(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 400
    groups = rng.integers(0, 30, n)
    scores = rng.integers(0, 6, n).astype(np.float64)  # few values: many ties
    labels = (rng.random(n) < 0.3 + 0.1 * scores).astype(np.float32)
    labels[groups == 7] = 1.0  # one class only: left out
    value, users = group_auc(groups, scores, labels)
    assert value == pytest.approx(_gauc_brute_force(groups, scores, labels), abs=1e-12)
    counted = [g for g in np.unique(groups) if 0 < labels[groups == g].mean() < 1]
    assert users == len(counted) and 7 not in counted


def test_gauc_of_one_user_is_that_users_auc_and_weights_follow_rows() -> None:
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.3])
    labels = torch.tensor([0, 0, 1, 1, 1, 0, 1])
    auc = float(BinaryAUROC()(scores, labels))
    assert group_auc(np.zeros(7), scores.numpy(), labels.numpy()) == (pytest.approx(auc), 1)
    # user 1: 2 rows, AUC 1; user 2: 4 rows, AUC 0 -> (2 * 1 + 4 * 0) / 6
    groups = np.array([1, 1, 2, 2, 2, 2])
    value, users = group_auc(groups, np.array([1, 0, 0, 1, 0, 1.0]), np.array([1, 0, 1, 0, 1, 0]))
    assert (value, users) == (pytest.approx(2 / 6), 2)
    assert np.isnan(group_auc(np.array([1, 1]), np.array([0.2, 0.3]), np.ones(2))[0])


def test_the_training_metrics_report_gauc_without_missing_or_unknown_users() -> None:
    rng = np.random.default_rng(0)
    users = torch.from_numpy(rng.integers(0, 12, 300))
    logits = torch.from_numpy(rng.normal(size=300)).float()
    labels = (
        torch.rand(300, generator=torch.Generator().manual_seed(0)) < torch.sigmoid(logits)
    ).float()
    metrics = RankerMetrics("val")
    for lo in range(0, 300, 64):  # in batches, as the loop feeds it
        metrics.update(logits[lo : lo + 64], labels[lo : lo + 64], users[lo : lo + 64])
    known = (users >= 2).numpy()
    expected, _ = group_auc(users.numpy()[known], logits.numpy()[known], labels.numpy()[known])
    values = metrics.compute()
    assert values["val/gauc"] == pytest.approx(expected, abs=1e-6)
    assert values["val/gauc"] != pytest.approx(
        group_auc(users.numpy(), logits.numpy(), labels.numpy())[0]
    )
    plain = RankerMetrics("val")
    plain.update(logits, labels)
    assert "val/gauc" not in plain.compute()


def test_evaluate_targets_positives_only_and_every_held_out_item(tmp_path: Path) -> None:
    data = write_processed(tmp_path / "data", rows=600)
    spec = processed_spec()
    table = pq.read_table(data / "test", columns=["user", "item", "label"]).to_pylist()
    positives = held_out_positives(data, "test", spec)
    every = held_out_positives(data, "test", spec, positives_only=False)
    expected_all: dict[int, set[int]] = {}
    for row in table:
        expected_all.setdefault(row["user"], set()).add(row["item"])
    expected_pos: dict[int, set[int]] = {}
    for row in table:
        if row["label"] > 0.5:
            expected_pos.setdefault(row["user"], set()).add(row["item"])
    assert every == expected_all and positives == expected_pos
    assert sum(map(len, every.values())) > sum(map(len, positives.values()))
