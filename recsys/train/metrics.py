"""Validation metrics, from torchmetrics so they synchronise across data-parallel workers.

Rankers: AUC, log loss, accuracy, precision, recall of the label, and GAUC (per-user AUC
weighted by each user's rows, recsys/ranking_metrics.py) when the spec names a user_id.
Retrieval (two-tower): Recall@K and NDCG@K of each held-out interaction's item among ALL
items of the catalogue (not only the batch), one relevant item per query, with the user's
positive train items taken out of the ranking (docs/training.md: how this relates to
recsys.evaluate's per-user metrics).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryPrecision,
    BinaryRecall,
)

from recsys.features.feature_spec import FeatureSpec
from recsys.ranking_metrics import group_auc
from recsys.train.data import Batch, Shard, iter_batches

FIRST_KNOWN_ID = 2  # encoded ids: 0 missing, 1 unknown, known values from 2


class GroupAUC(Metric):
    """GAUC: each user's AUC weighted by the user's rows; users with one class left out.

    Rows of a missing or unknown user (encoded 0 or 1) are left out too: those ids pool many
    users, and an AUC over strangers is not a per-user AUC. The states are the rows
    themselves (concatenated across workers at `compute`), as an AUC needs.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("users", default=[], dist_reduce_fx="cat")
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, labels: Tensor, users: Tensor) -> None:
        known = users >= FIRST_KNOWN_ID
        self.users.append(users[known].long())
        self.scores.append(scores[known].float())
        self.labels.append(labels[known].float())

    def compute(self) -> Tensor:
        def flat(state: Tensor | list[Tensor]) -> np.ndarray:
            if isinstance(state, list):
                state = torch.cat(state) if state else torch.zeros(0)
            return state.cpu().numpy()

        value, _ = group_auc(flat(self.users), flat(self.scores), flat(self.labels))
        return torch.tensor(value)


class RankerMetrics:
    """`<prefix>/auc`, `/logloss`, `/accuracy`, `/precision`, `/recall` of sigmoid(logits),
    and `/gauc` when `update` gets the rows' users."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.gauc: GroupAUC | None = None
        self.classification = MetricCollection(
            {
                "auc": BinaryAUROC(),
                "accuracy": BinaryAccuracy(),
                "precision": BinaryPrecision(),
                "recall": BinaryRecall(),
            }
        )
        self.logloss = MeanMetric()

    def update(self, logits: Tensor, labels: Tensor, users: Tensor | None = None) -> None:
        """logits and labels B; users B encoded user ids (None: no GAUC)."""
        logits, labels = logits.detach().float(), labels.detach().float()
        self.classification.update(torch.sigmoid(logits), labels.long())
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        self.logloss.update(loss)
        if users is not None:
            self.gauc = self.gauc or GroupAUC()
            self.gauc.update(logits, labels, users.detach())

    def compute(self) -> dict[str, float]:
        values = {k: float(v) for k, v in self.classification.compute().items()}
        values["logloss"] = float(self.logloss.compute())
        if self.gauc is not None:
            values["gauc"] = float(self.gauc.compute())
        return {f"{self.prefix}/{k}": v for k, v in sorted(values.items())}


class ItemCatalogue:
    """Every distinct item of a split with its item-tower features (first row of each item),
    and each user's positive items in that split (`seen`, to leave out of their rankings)."""

    def __init__(self, shard: Shard, spec: FeatureSpec) -> None:
        if spec.item_id is None:
            raise ValueError("retrieval metrics need the spec's item_id")
        self.item_id = spec.item_id
        names = {f.name for f in spec.for_input("item_tower")} | {spec.item_id}
        ids = shard.tensors[spec.item_id].numpy()
        _, first = np.unique(ids, return_index=True)
        index = torch.from_numpy(np.sort(first))
        self.features: Batch = {k: shard.tensors[k].index_select(0, index) for k in names}
        self.ids = self.features[spec.item_id]
        # catalogue row of each encoded item id, -1 when the item is not in the catalogue
        self.row_of_id = torch.full((spec[spec.item_id].size,), -1, dtype=torch.long)
        self.row_of_id[self.ids] = torch.arange(len(self.ids))
        self.seen = SeenItems(held_out_queries(shard, spec), spec, self.row_of_id)

    def __len__(self) -> int:
        return len(self.ids)

    @torch.no_grad()
    def embed(self, item_tower: nn.Module, batch_size: int = 8192) -> Tensor:
        n = len(self.ids)
        parts = []
        for lo in range(0, n, batch_size):
            parts.append(item_tower({k: v[lo : lo + batch_size] for k, v in self.features.items()}))
        return torch.cat(parts).float()


class SeenItems:
    """Each known user's positive items of a split, as catalogue rows (CSR: `start[u]` to
    `start[u + 1]` of `rows`). Users 0 and 1 (missing, unknown) pool strangers: none kept."""

    def __init__(self, positives: Shard, spec: FeatureSpec, row_of_id: Tensor) -> None:
        self.enabled = spec.user_id is not None and spec.user_id in positives.tensors
        n_users = int(spec[spec.user_id].size) if self.enabled else 1
        pairs = torch.zeros(2, 0, dtype=torch.long)
        if self.enabled:
            users = positives.tensors[spec.user_id].long()
            rows = row_of_id[positives.tensors[spec.item_id].long()]
            keep = (users >= FIRST_KNOWN_ID) & (rows >= 0)
            pairs = torch.unique(torch.stack([users[keep], rows[keep]]), dim=1)  # sorted by user
        counts = torch.bincount(pairs[0], minlength=n_users)
        self.start = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        self.rows = pairs[1]

    def of(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """(query index, catalogue row) of every item seen by each of `users` (Q ids)."""
        if not self.enabled:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        users = users.long().clamp(0, len(self.start) - 2)
        begin, counts = self.start[users], self.start[users + 1] - self.start[users]
        query = torch.repeat_interleave(torch.arange(len(users)), counts)
        offset = torch.arange(len(query)) - torch.repeat_interleave(
            counts.cumsum(0) - counts, counts
        )
        return query, self.rows[torch.repeat_interleave(begin, counts) + offset]


class RetrievalMetrics:
    """`<prefix>/recall@K` and `<prefix>/ndcg@K` against every item of a catalogue."""

    def __init__(self, prefix: str, k: int) -> None:
        self.prefix, self.k = prefix, k
        self.recall, self.ndcg = MeanMetric(), MeanMetric()

    @torch.no_grad()
    def update(
        self,
        user_vectors: Tensor,
        targets: Tensor,
        items: Tensor,
        row_of_id: Tensor,
        seen: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        """user_vectors Q x D, targets Q encoded item ids, items N x D catalogue vectors;
        `seen` = (query index, catalogue row) pairs left out of each query's ranking (its
        user's train items). A query whose target is among them is not counted: the item
        cannot be recommended to that user (as recsys.evaluate drops such positives)."""
        if len(targets) == 0:
            return
        scores = user_vectors.float() @ items.T  # Q x N
        rows = row_of_id[targets]
        known = rows >= 0
        counted = torch.ones_like(known)
        if seen is not None and len(seen[0]):
            query, row = seen
            counted[query[row == rows[query]]] = False
            scores[query, row] = -math.inf
        target_scores = scores.gather(1, rows.clamp(min=0).unsqueeze(1))
        # rank = items scoring strictly higher than the target (0 = first)
        rank = (scores > target_scores).sum(dim=1).float()
        rank = torch.where(known, rank, torch.full_like(rank, math.inf))[counted]
        if len(rank) == 0:
            return
        hit = rank < self.k
        self.recall.update(hit.float())
        self.ndcg.update(torch.where(hit, 1.0 / torch.log2(rank + 2.0), torch.zeros_like(rank)))

    def compute(self) -> dict[str, float]:
        return {
            f"{self.prefix}/recall@{self.k}": float(self.recall.compute()),
            f"{self.prefix}/ndcg@{self.k}": float(self.ndcg.compute()),
        }


def held_out_queries(shard: Shard, spec: FeatureSpec) -> Shard:
    """The interactions to retrieve: positive rows when the spec has a label, else all rows."""
    if spec.label is None or spec.label not in shard.tensors:
        return shard
    keep = torch.nonzero(shard.tensors[spec.label] > 0.5).squeeze(1)
    tensors = {k: v.index_select(0, keep) for k, v in shard.tensors.items()}
    return Shard(tensors=tensors, num_rows=len(keep), total_rows=shard.total_rows)


@torch.no_grad()
def evaluate_retrieval(
    model: nn.Module,
    queries: Shard,
    catalogue: ItemCatalogue,
    spec: FeatureSpec,
    prefix: str,
    k: int,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Recall@K / NDCG@K of `queries` (a shard of held-out interactions) over `catalogue`,
    each user's positive catalogue items (train's) left out of their ranking."""
    items = catalogue.embed(model.item_tower)
    metrics = RetrievalMetrics(prefix, k)
    for batch in iter_batches(queries, batch_size):
        seen = catalogue.seen.of(batch[spec.user_id]) if catalogue.seen.enabled else None
        metrics.update(
            model.user_tower(batch), batch[spec.item_id], items, catalogue.row_of_id, seen
        )
    return metrics.compute()
