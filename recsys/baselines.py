"""Honest retrieval baselines that every model is reported next to (`recsys.evaluate`).

- popularity: the items with the most positive train interactions, the same list for all;
- item-kNN: cosine similarity of items on the binary user x item matrix of positive train
  interactions, each item keeping its `neighbours` most similar items; a user's score for an
  item is the sum of its similarities to the user's train items (Sarwar et al. 2001,
  Deshpande & Karypis 2004).

Both take encoded ids (the processed data's: 0 missing, 1 unknown, known values from 2) and
never recommend an id below 2.
"""

from __future__ import annotations

import numpy as np
import torch


def item_neighbours(
    users: np.ndarray, items: np.ndarray, n_items: int, neighbours: int = 100, batch: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Each item's `neighbours` most cosine-similar other items on the binary user x item
    matrix of the (user, item) pairs: (ids, similarities), both n_items x neighbours (id -1
    and similarity 0 where an item has fewer with any user in common)."""
    pairs = np.unique(np.stack([users, items]).astype(np.int64), axis=1)
    n_users = int(pairs[0].max()) + 1 if pairs.size else 1
    values = torch.ones(pairs.shape[1], dtype=torch.float32)
    item_user = torch.sparse_coo_tensor(
        torch.from_numpy(pairs[::-1].copy()), values, (n_items, n_users), check_invariants=True
    ).coalesce()
    norm = torch.from_numpy(
        np.sqrt(np.maximum(np.bincount(pairs[1], minlength=n_items), 1)).astype(np.float32)
    )
    k = max(1, min(neighbours, n_items - 1))
    ids = np.full((n_items, k), -1, np.int64)
    sims = np.zeros((n_items, k), np.float32)
    for start in range(0, n_items, batch):
        stop = min(start + batch, n_items)
        inside = (pairs[1] >= start) & (pairs[1] < stop)
        block = torch.zeros(n_users, stop - start)  # U x B: the batch's items' users
        block[pairs[0][inside], pairs[1][inside] - start] = 1.0
        common = torch.sparse.mm(item_user, block).T  # B x I: users in common
        sim = common / (norm[start:stop, None] * norm[None, :])
        sim[torch.arange(stop - start), torch.arange(start, stop)] = 0.0  # not its own
        top = torch.topk(sim, k, dim=1)
        found = (top.values > 0).numpy()
        ids[start:stop] = np.where(found, top.indices.numpy(), -1)
        sims[start:stop] = np.where(found, top.values.numpy(), 0.0)
    return ids, sims


def item_knn_top(
    history: list[set[int]],
    neighbour_ids: np.ndarray,
    neighbour_sims: np.ndarray,
    k: int,
    exclude: list[set[int]] | None = None,
) -> np.ndarray:
    """Each user's top `k` items (U x k, -1 padding) by summed similarity to their history,
    minus `exclude` (and ids below 2)."""
    n_items = neighbour_ids.shape[0]
    out = np.full((len(history), k), -1, np.int64)
    for row, items in enumerate(history):
        seen = [i for i in items if 0 <= i < n_items]
        if not seen:
            continue
        ids = neighbour_ids[seen].reshape(-1)
        sims = neighbour_sims[seen].reshape(-1)
        keep = ids >= 2
        scores = np.bincount(ids[keep], weights=sims[keep], minlength=n_items)
        for item in exclude[row] if exclude is not None else ():
            if 0 <= item < n_items:
                scores[item] = 0.0
        candidates = np.flatnonzero(scores > 0)
        order = candidates[np.argsort(-scores[candidates], kind="stable")][:k]
        out[row, : len(order)] = order
    return out


def popularity_top(
    items: np.ndarray, k: int, n_users: int, exclude: list[set[int]] | None = None
) -> np.ndarray:
    """The most frequent ids (>= 2) of `items` for each of `n_users` users (U x k, -1
    padding), minus each user's `exclude`."""
    counts = np.bincount(items[items >= 2], minlength=2) if items.size else np.zeros(2, int)
    ranked = np.argsort(-counts, kind="stable")
    ranked = ranked[counts[ranked] > 0]
    out = np.full((n_users, k), -1, np.int64)
    for row in range(n_users):
        skip = exclude[row] if exclude is not None else set()
        chosen = [int(i) for i in ranked[: k + len(skip)] if int(i) not in skip][:k]
        out[row, : len(chosen)] = chosen
    return out
