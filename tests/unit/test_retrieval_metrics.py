"""The training loop's retrieval metric (recsys/train/metrics.py): each held-out interaction's
item ranked among the catalogue with the user's positive train items left out, against a
brute-force reference."""

import math

import numpy as np
import pytest
import torch

from recsys.train.data import Shard
from recsys.train.metrics import ItemCatalogue, RetrievalMetrics
from tests.helpers.processed_data import spec as processed_spec

ITEMS = 25  # encoded item ids 2..26


def _train(rng: np.random.Generator, n: int = 300) -> Shard:
    users = rng.integers(0, 12, n)  # 0 and 1 (missing, unknown) too
    items = rng.integers(2, ITEMS + 2, n)
    tensors = {
        "user": torch.from_numpy(users),
        "item": torch.from_numpy(items),
        "category": torch.from_numpy(items % 5 + 2),
        "tags": torch.zeros(n, 3, dtype=torch.long),
        "label": torch.from_numpy((rng.random(n) < 0.4).astype(np.float32)),
    }
    return Shard(tensors=tensors, num_rows=n, total_rows=n)


def _brute_force(vectors, targets, users, item_vectors, catalogue_ids, seen, k):
    """Mean hit and nDCG over the queries whose target the user has not seen in train."""
    hits, gains = [], []
    for q, (target, user) in enumerate(zip(targets, users, strict=True)):
        if user >= 2 and target in seen.get(user, set()):
            continue  # cannot be recommended: not counted
        if target not in catalogue_ids:
            hits.append(0.0)
            gains.append(0.0)
            continue
        score = {i: float(vectors[q] @ item_vectors[r]) for r, i in enumerate(catalogue_ids)}
        others = [
            i
            for i in catalogue_ids
            if i != target and not (user >= 2 and i in seen.get(user, set()))
        ]
        rank = sum(score[i] > score[target] for i in others)
        hits.append(float(rank < k))
        gains.append(1 / math.log2(rank + 2) if rank < k else 0.0)
    return float(np.mean(hits)), float(np.mean(gains))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_train_items_are_left_out_of_each_users_ranking(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    train = _train(rng)
    catalogue = ItemCatalogue(train, processed_spec())
    train_ids = train.tensors["item"].numpy()
    positive = train.tensors["label"].numpy() > 0.5
    seen: dict[int, set[int]] = {}
    for u, i in zip(train.tensors["user"].numpy()[positive], train_ids[positive], strict=True):
        seen.setdefault(int(u), set()).add(int(i))
    queries = 80
    users = torch.from_numpy(rng.integers(0, 13, queries))  # user 12 has no train rows
    targets = torch.from_numpy(rng.integers(2, ITEMS + 4, queries))  # 27, 28: not in catalogue
    vectors = torch.from_numpy(rng.normal(size=(queries, 4))).float()
    item_vectors = torch.from_numpy(rng.normal(size=(len(catalogue), 4))).float()

    metrics = RetrievalMetrics("val", k)
    for lo in range(0, queries, 32):  # in batches, as evaluate_retrieval feeds it
        part = slice(lo, lo + 32)
        metrics.update(
            vectors[part],
            targets[part],
            item_vectors,
            catalogue.row_of_id,
            catalogue.seen.of(users[part]),
        )
    ids = catalogue.ids.tolist()
    recall, ndcg = _brute_force(
        vectors.numpy(), targets.tolist(), users.tolist(), item_vectors.numpy(), ids, seen, k
    )
    values = metrics.compute()
    assert values[f"val/recall@{k}"] == pytest.approx(recall, abs=1e-6)
    assert values[f"val/ndcg@{k}"] == pytest.approx(ndcg, abs=1e-6)


def test_without_exclusion_a_seen_item_takes_a_place() -> None:
    rng = np.random.default_rng(0)
    train = _train(rng)
    catalogue = ItemCatalogue(train, processed_spec())
    user = int(next(u for u in range(2, 12) if len(catalogue.seen.of(torch.tensor([u]))[0])))
    query, rows = catalogue.seen.of(torch.tensor([user]))
    item_vectors = torch.eye(len(catalogue))
    # the user's vector points at one seen item most, then at an unseen target
    target_row = next(r for r in range(len(catalogue)) if r not in set(rows.tolist()))
    vector = torch.zeros(1, len(catalogue))
    vector[0, rows[0]], vector[0, target_row] = 2.0, 1.0
    target = catalogue.ids[target_row : target_row + 1]
    with_seen = RetrievalMetrics("val", 1)
    with_seen.update(vector, target, item_vectors, catalogue.row_of_id, (query, rows))
    plain = RetrievalMetrics("val", 1)
    plain.update(vector, target, item_vectors, catalogue.row_of_id)
    assert with_seen.compute()["val/recall@1"] == 1.0 and plain.compute()["val/recall@1"] == 0.0
