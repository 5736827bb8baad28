"""Validation metrics, from torchmetrics so they synchronise across data-parallel workers.

Rankers: AUC, log loss, accuracy, precision, recall of the label.
Retrieval (two-tower): Recall@K and NDCG@K of each held-out interaction's item among ALL
items of the catalogue (not only the batch), one relevant item per query.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryPrecision,
    BinaryRecall,
)

from recsys.features.feature_spec import FeatureSpec
from recsys.train.data import Batch, Shard, iter_batches


class RankerMetrics:
    """`<prefix>/auc`, `/logloss`, `/accuracy`, `/precision`, `/recall` of sigmoid(logits)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.classification = MetricCollection(
            {
                "auc": BinaryAUROC(),
                "accuracy": BinaryAccuracy(),
                "precision": BinaryPrecision(),
                "recall": BinaryRecall(),
            }
        )
        self.logloss = MeanMetric()

    def update(self, logits: Tensor, labels: Tensor) -> None:
        logits, labels = logits.detach().float(), labels.detach().float()
        self.classification.update(torch.sigmoid(logits), labels.long())
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        self.logloss.update(loss)

    def compute(self) -> dict[str, float]:
        values = {k: float(v) for k, v in self.classification.compute().items()}
        values["logloss"] = float(self.logloss.compute())
        return {f"{self.prefix}/{k}": v for k, v in sorted(values.items())}


class ItemCatalogue:
    """Every distinct item of a split with its item-tower features (first row of each item)."""

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

    def __len__(self) -> int:
        return len(self.ids)

    @torch.no_grad()
    def embed(self, item_tower: nn.Module, batch_size: int = 8192) -> Tensor:
        n = len(self.ids)
        parts = []
        for lo in range(0, n, batch_size):
            parts.append(item_tower({k: v[lo : lo + batch_size] for k, v in self.features.items()}))
        return torch.cat(parts).float()


class RetrievalMetrics:
    """`<prefix>/recall@K` and `<prefix>/ndcg@K` against every item of a catalogue."""

    def __init__(self, prefix: str, k: int) -> None:
        self.prefix, self.k = prefix, k
        self.recall, self.ndcg = MeanMetric(), MeanMetric()

    @torch.no_grad()
    def update(self, user_vectors: Tensor, targets: Tensor, items: Tensor, row_of_id: Tensor):
        """user_vectors Q x D, targets Q encoded item ids, items N x D catalogue vectors."""
        if len(targets) == 0:
            return
        scores = user_vectors.float() @ items.T  # Q x N
        rows = row_of_id[targets]
        known = rows >= 0
        target_scores = scores.gather(1, rows.clamp(min=0).unsqueeze(1))
        # rank = items scoring strictly higher than the target (0 = first)
        rank = (scores > target_scores).sum(dim=1).float()
        rank = torch.where(known, rank, torch.full_like(rank, math.inf))
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
    """Recall@K / NDCG@K of `queries` (a shard of held-out interactions) over `catalogue`."""
    items = catalogue.embed(model.item_tower)
    metrics = RetrievalMetrics(prefix, k)
    for batch in iter_batches(queries, batch_size):
        metrics.update(model.user_tower(batch), batch[spec.item_id], items, catalogue.row_of_id)
    return metrics.compute()
