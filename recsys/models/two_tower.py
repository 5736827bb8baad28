"""Two-tower retrieval model: a user tower and an item tower, L2-normalised, dot-product score.

Each tower is an MLP over the embeddings and dense vector of its features (those the spec
marks `user_tower` / `item_tower`); its last layer is linear and gives the retrieval vector
(default [1024, 512, 128], like Friesian's). score(u, i) = <u, i> / temperature, with the
temperature fixed or learned. Serving exports `user_tower` on its own and indexes
`item_tower` outputs in Faiss (inner product on unit vectors = cosine).
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.models.inputs import InputLayer, as_feature_spec, check_embedding_dims
from recsys.models.mlp import MLP
from recsys.models.train_wrappers import TWO_TOWER_LOSSES, TwoTowerTrain

MAX_INVERSE_TEMPERATURE = 100.0
"""A learned temperature is kept >= 0.01 (CLIP's bound on its logit scale)."""

LOG_Q_MODES = ("estimate", "none")

HISTORY_STAT = "history_of"
"""A user-history feature's spec stats name the item feature its entries are ids of."""


class Tower(nn.Module):
    """forward(features: Dict[str, Tensor]) -> B x D, each row of unit L2 norm."""

    def __init__(
        self,
        features: Sequence[Any],
        embedding_dim: int,
        units: Sequence[int],
        dropout: float = 0.0,
        batch_norm: bool = False,
        sparse: bool = False,
        embedding_dims: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        units = [int(u) for u in units]
        if not units:
            raise ValueError("a tower needs at least one layer size (the output size)")
        self.inputs = InputLayer(features, embedding_dim, embedding_dims, sparse)
        self.mlp = MLP(self.inputs.output_dim, units[:-1], dropout, batch_norm, units[-1])
        self.output_dim = units[-1]

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return F.normalize(self.mlp(self.inputs(features)), p=2.0, dim=-1)


class TwoTower(nn.Module):
    """forward(features) -> B scores of row-aligned (user, item) pairs: <u, i> / temperature.

    `loss` names the training objective that `TwoTowerTrain` uses by default (in_batch or
    bce); the module itself computes scores only. `log_q`, `mask_user_positives` and
    `embedding_l2` are switches of that objective (see `TwoTowerTrain`), kept here so that
    the model's config holds them.

    A user-tower list feature whose spec stats say `history_of: <spec.item_id>` (the
    `user_history` feature op) is a user-history feature: the training wrapper hides the
    row's own item from it, and with `share_history_embedding` it pools rows of the item
    tower's item-id table (one vector per item, learned from both towers) instead of a table
    of its own; the two must then have the same size and embedding width.
    """

    # the FeatureSpec and the training switches stay Python-side
    __jit_ignored_attributes__ = (
        "spec",
        "log_q",
        "mask_user_positives",
        "embedding_l2",
        "history_features",
    )
    train_wrapper_class = TwoTowerTrain

    def __init__(
        self,
        spec: Any,
        embedding_dim: int = 16,
        tower_units: Sequence[int] = (1024, 512, 128),
        temperature: float = 0.05,
        learn_temperature: bool = False,
        loss: str = "in_batch",
        dropout: float = 0.0,
        batch_norm: bool = False,
        sparse: bool = False,
        embedding_dims: Mapping[str, int] | None = None,
        log_q: str = "estimate",
        mask_user_positives: bool = False,
        share_history_embedding: bool = True,
        embedding_l2: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec = as_feature_spec(spec)
        log_q = str(getattr(log_q, "value", log_q))  # the config's LogQ enum or its value
        if log_q not in LOG_Q_MODES:
            raise ValueError(f"log_q {log_q!r} is not one of {LOG_Q_MODES}")
        if embedding_l2 < 0:
            raise ValueError(f"embedding_l2 must be >= 0, got {embedding_l2}")
        self.log_q = log_q
        self.mask_user_positives = bool(mask_user_positives)
        self.embedding_l2 = float(embedding_l2)
        dims = check_embedding_dims(self.spec, embedding_dims)
        if loss not in TWO_TOWER_LOSSES:
            raise ValueError(f"loss {loss!r} is not one of {TWO_TOWER_LOSSES}")
        if temperature < 1.0 / MAX_INVERSE_TEMPERATURE:
            raise ValueError(f"temperature must be >= {1.0 / MAX_INVERSE_TEMPERATURE}")
        self.default_loss = loss
        self.max_inverse_temperature = MAX_INVERSE_TEMPERATURE
        towers = {}
        for side in ("user_tower", "item_tower"):
            features = self.spec.for_input(side)
            if not features:
                raise ValueError(f"TwoTower needs features marked {side!r} in the spec")
            towers[side] = Tower(
                features,
                int(embedding_dim),
                tower_units,
                float(dropout),
                bool(batch_norm),
                sparse,
                dims,
            )
        self.user_tower = towers["user_tower"]
        self.item_tower = towers["item_tower"]
        self.history_features = history_features(self.spec)
        if share_history_embedding:
            for name in self.history_features:
                self._share_item_table(name)
        log_temperature = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_temperature)
        else:
            self.register_buffer("log_temperature", log_temperature)

    def _share_item_table(self, name: str) -> None:
        """Make history feature `name` pool rows of the item tower's item-id table."""
        item_id = self.spec.item_id
        assert item_id is not None
        tables = self.item_tower.inputs.embeddings
        if item_id not in tables:
            raise ValueError(
                f"share_history_embedding: {name!r} is a history of {item_id!r}, which the "
                "item tower does not read; set share_history_embedding=false"
            )
        item, bag = tables[item_id], self.user_tower.inputs.embeddings[name]
        if item.weight.shape != bag.weight.shape:
            raise ValueError(
                f"share_history_embedding: {name!r} has a {tuple(bag.weight.shape)} table and "
                f"{item_id!r} a {tuple(item.weight.shape)} one; give them one size and width "
                "or set share_history_embedding=false"
            )
        bag.weight = item.weight

    @torch.jit.export
    def inverse_temperature(self) -> Tensor:
        """1 / temperature as a 0-d tensor (at most MAX_INVERSE_TEMPERATURE)."""
        return torch.exp(-self.log_temperature).clamp(max=self.max_inverse_temperature)

    @torch.jit.export
    def user_embedding(self, features: dict[str, Tensor]) -> Tensor:
        """B x D unit vectors from the user-tower features."""
        return self.user_tower(features)

    @torch.jit.export
    def item_embedding(self, features: dict[str, Tensor]) -> Tensor:
        """B x D unit vectors from the item-tower features."""
        return self.item_tower(features)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        users = self.user_tower(features)
        items = self.item_tower(features)
        return (users * items).sum(dim=-1) * self.inverse_temperature()


def history_features(spec: Any) -> list[str]:
    """User-tower list features of `spec` that hold the user's past items (`spec.item_id`)."""
    if spec.item_id is None:
        return []
    return [
        f.name
        for f in spec.for_input("user_tower")
        if f.kind == "multi_categorical" and f.stats.get(HISTORY_STAT) == spec.item_id
    ]
