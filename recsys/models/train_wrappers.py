"""Training wrappers that own the loss (the torchrec pattern).

The exported modules compute scores only; a wrapper takes the model and a batch and returns
`(loss, logits)`: loss a 0-d fp32 tensor, logits B (the row-aligned scores that metrics such
as AUC read). Each model class names its wrapper in `train_wrapper_class`, so the training
loop calls `train_wrapper(model, train_rows=n)` and never branches on the model's name
(`train_rows`, the rows of the training split, scales a ranker's L2 prior).
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.models.inputs import embedding_penalty

TWO_TOWER_LOSSES = ("in_batch", "bce")


def train_wrapper(model: nn.Module, **kwargs: Any) -> nn.Module:
    """The model's training wrapper (`type(model).train_wrapper_class(model, **kwargs)`).

    Pass `train_rows` (rows of the training split): a ranker with `embedding_l2 > 0` needs it.
    """
    wrapper = getattr(type(model), "train_wrapper_class", None)
    if wrapper is None:
        raise TypeError(f"{type(model).__name__} names no train_wrapper_class")
    return wrapper(model, **kwargs)


def _label_of(model: nn.Module) -> str:
    label = model.spec.label
    if label is None:
        raise ValueError(f"{type(model).__name__}: the feature spec names no label to train on")
    return label


def _check_prior(model: nn.Module, embedding_l2: float, train_rows: int | None) -> None:
    """Refuse an L2 prior on the embedding tables that cannot be applied as configured."""
    if embedding_l2 < 0:
        raise ValueError(f"embedding_l2 must be >= 0, got {embedding_l2}")
    if embedding_l2 > 0 and any(
        getattr(m, "sparse", False)
        for m in model.modules()
        if isinstance(m, nn.Embedding | nn.EmbeddingBag)
    ):
        # the prior's gradient reaches every row: dense, which SparseAdam refuses
        raise ValueError("embedding_l2 > 0 needs dense tables (sparse=false)")
    if embedding_l2 > 0 and train_rows is None:
        raise ValueError("embedding_l2 > 0 needs train_rows (rows of the training split)")
    if train_rows is not None and train_rows < 1:
        raise ValueError(f"train_rows must be >= 1, got {train_rows}")


class RankerTrain(nn.Module):
    """Binary cross-entropy with logits on `batch[spec.label]` (0/1 float) for a ranker.

    A model with `embedding_l2 > 0` adds an L2 prior on its embedding tables: the training
    objective over the whole data set is sum_rows BCE + embedding_l2 * sum ||W||^2, so each
    batch (whose loss is a mean over its rows) adds embedding_l2 * sum ||W||^2 / train_rows.
    Every row of a table is pulled to zero at every step, whether the batch used it or not:
    an id seen in few rows stays near zero, and one seen in many rows moves as far as its
    data says. The prior's weight against the data falls as the data grows.
    """

    def __init__(self, model: nn.Module, train_rows: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.label = _label_of(model)
        self.embedding_l2 = float(getattr(model, "embedding_l2", 0.0))
        _check_prior(model, self.embedding_l2, train_rows)
        self.train_rows = 1 if train_rows is None else int(train_rows)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logits = self.model(batch)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch[self.label].float())
        if self.embedding_l2 > 0 and self.training:
            penalty = embedding_penalty(self.model) / self.train_rows
            loss = loss + self.embedding_l2 * penalty
        return loss, logits


class TwoTowerTrain(nn.Module):
    """The two-tower objectives.

    - `bce`: labelled pairs; BCE with logits of <u, i> / temperature on `batch[spec.label]`.
    - `in_batch`: sampled softmax over the batch's items. Each positive row (label > 0.5 when
      the batch holds the spec's label, else every row) is a query; its candidates are all
      the batch's items; other rows holding the same item (`spec.item_id`) are masked out, as
      they are not negatives. The logQ correction (Yi et al. 2019, "Sampling-bias-corrected
      neural modeling for large corpus item recommendations") subtracts log q(item) from
      every candidate's logit, q being how likely the item is to be in a batch:
      `item_log_q` (a tensor indexed by encoded item id) when given, else a streaming
      estimate kept in buffers (the paper's Algorithm 2, one step per training batch,
      learning rate `log_q_alpha`), unless `estimate_log_q` is False.

    The model's switches (attributes of `TwoTower`, set in its config) shape the objective:
    - `log_q` ("estimate" | "none"): the default of `estimate_log_q`;
    - `mask_user_positives`: a candidate that is a positive of the query's own user (the
      spec's `user_id`) in another row is masked out too: it is no negative for that user;
    - `hidden_history`: user-history lists, each mapped to the item feature its entries are
      values of. An item-id history loses every entry equal to the row's item (set to
      padding, 0), so the user tower never sees the item it must find; a history of another
      item column (the author) loses one entry equal to the row's value, the one the row
      added itself, and keeps the user's other rows' ones (leave-one-out);
    - `embedding_l2`: an L2 prior on the embedding tables, as `RankerTrain` adds it
      (embedding_l2 * sum ||W||^2 / train_rows per batch, training batches only).

    `loss=None` takes the model's configured `loss`.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | None = None,
        item_log_q: Tensor | None = None,
        estimate_log_q: bool | None = None,
        log_q_alpha: float = 0.01,
        train_rows: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss_name = loss if loss is not None else str(model.default_loss)
        if self.loss_name not in TWO_TOWER_LOSSES:
            raise ValueError(f"loss {self.loss_name!r} is not one of {TWO_TOWER_LOSSES}")
        spec = model.spec
        self.label: str | None = spec.label
        if self.loss_name == "bce":
            self.label = _label_of(model)
        self.item_id: str | None = spec.item_id
        self.user_id: str | None = spec.user_id
        self.mask_user_positives = bool(getattr(model, "mask_user_positives", False))
        if self.mask_user_positives and self.user_id is None:
            raise ValueError("mask_user_positives needs the spec's user_id in the batch")
        self.hidden_history: dict[str, str] = dict(getattr(model, "hidden_history", {}))
        self.embedding_l2 = float(getattr(model, "embedding_l2", 0.0))
        if self.embedding_l2 < 0:
            raise ValueError(f"embedding_l2 must be >= 0, got {self.embedding_l2}")
        _check_prior(model, self.embedding_l2, train_rows)
        self.train_rows = 1 if train_rows is None else int(train_rows)
        if estimate_log_q is None:
            estimate_log_q = str(getattr(model, "log_q", "estimate")) == "estimate"
        self.estimate_log_q = False
        self.log_q_alpha = float(log_q_alpha)
        self.register_buffer("item_log_q", None)
        if item_log_q is not None:
            if self.item_id is None:
                raise ValueError("item_log_q needs the spec's item_id to index it")
            size = spec[self.item_id].size
            if item_log_q.shape != (size,):
                raise ValueError(f"item_log_q has shape {tuple(item_log_q.shape)}, want ({size},)")
            self.item_log_q = item_log_q.detach().float().clone()
        elif estimate_log_q and self.item_id is not None and self.loss_name == "in_batch":
            size = spec[self.item_id].size
            self.estimate_log_q = True
            self.register_buffer("log_q_step", torch.zeros((), dtype=torch.long))
            self.register_buffer("log_q_last_seen", torch.zeros(size))
            self.register_buffer("log_q_gap", torch.zeros(size))

    def _log_q(self, ids: Tensor) -> Tensor | None:
        """log q for the batch's item ids (B), updating the streaming estimate in training."""
        if self.item_log_q is not None:
            return self.item_log_q[ids]
        if not self.estimate_log_q:
            return None
        if self.training:
            with torch.no_grad():
                self.log_q_step += 1
                step = self.log_q_step.float()
                gap = step - self.log_q_last_seen[ids]
                old = self.log_q_gap[ids]
                blended = (1.0 - self.log_q_alpha) * old + self.log_q_alpha * gap
                self.log_q_gap[ids] = torch.where(old > 0, blended, gap)
                self.log_q_last_seen[ids] = step
        # q = 1 / (batches between sightings); an item never seen counts as q = 1
        return -torch.log(self.log_q_gap[ids].clamp(min=1.0))

    def _without_own_item(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The batch with each history list's entries equal to the row's own value set to 0."""
        if not self.hidden_history:
            return batch
        masked = dict(batch)
        for name, source in self.hidden_history.items():
            same = batch[name] == batch[source].unsqueeze(1)  # B x max_len
            if source != self.item_id:
                same = same & (same.cumsum(dim=1) == 1)  # the first occurrence only
            masked[name] = batch[name].masked_fill(same, 0)
        return masked

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        batch = self._without_own_item(batch)
        users = self.model.user_embedding(batch)
        items = self.model.item_embedding(batch)
        scale = self.model.inverse_temperature()
        logits = (users * items).sum(dim=-1) * scale
        if self.loss_name == "bce":
            assert self.label is not None
            target = batch[self.label].float()
            loss = F.binary_cross_entropy_with_logits(logits.float(), target)
            return self._with_prior(loss), logits
        scores = (users @ items.T).float() * scale  # B x B: query rows, candidate columns
        rows = torch.arange(scores.shape[0], device=scores.device)
        positive = None
        if self.label is not None and self.label in batch:
            positive = batch[self.label] > 0.5
        masked = torch.zeros_like(scores, dtype=torch.bool)
        if self.item_id is not None:
            ids = batch[self.item_id]
            log_q = self._log_q(ids)
            if log_q is not None:
                scores = scores - log_q.unsqueeze(0)
            masked |= ids.unsqueeze(0) == ids.unsqueeze(1)
        if self.mask_user_positives:
            assert self.user_id is not None
            users_of = batch[self.user_id]
            same_user = users_of.unsqueeze(0) == users_of.unsqueeze(1)
            # a column is a positive of the query's user: no negative for that query
            masked |= same_user if positive is None else same_user & positive.unsqueeze(0)
        masked.fill_diagonal_(False)
        scores = scores.masked_fill(masked, float("-inf"))
        if positive is not None:
            scores, rows = scores[positive], rows[positive]
        if rows.numel() == 0:
            return self._with_prior(scores.sum() * 0.0), logits
        return self._with_prior(F.cross_entropy(scores, rows)), logits

    def _with_prior(self, loss: Tensor) -> Tensor:
        if self.embedding_l2 > 0 and self.training:
            penalty = embedding_penalty(self.model) / self.train_rows
            loss = loss + self.embedding_l2 * penalty
        return loss
