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

from recsys.features.history import HISTORY_STAT
from recsys.models.inputs import InputLayer, as_feature_spec, check_embedding_dims
from recsys.models.mlp import MLP
from recsys.models.train_wrappers import TWO_TOWER_LOSSES, TwoTowerTrain

MAX_INVERSE_TEMPERATURE = 100.0
"""A learned temperature is kept >= 0.01 (CLIP's bound on its logit scale)."""

LOG_Q_MODES = ("estimate", "none")


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

    A user-tower list feature whose spec stats say `history_of: <feature>` (the
    `user_history` feature op), `<feature>` being an index feature of the item tower (the
    item id, or e.g. the item's author), is a user-history feature: `history_features` maps
    it to `<feature>`. In training the wrapper hides the row's own value of `<feature>` from
    it (`hide_own_history`; always for the item id, else the model would learn that an item
    goes with itself). With `share_history_embedding` it pools rows of the item tower's
    table of `<feature>` (one vector per value, learned from both towers) instead of a table
    of its own; the two must then have the same size and embedding width.
    """

    # the FeatureSpec and the training switches stay Python-side
    __jit_ignored_attributes__ = (
        "spec",
        "log_q",
        "mask_user_positives",
        "embedding_l2",
        "history_features",
        "hidden_history",
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
        hide_own_history: bool = True,
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
        # the item id is always hidden from its own history: that is what the model must find
        self.hidden_history = {
            name: source
            for name, source in self.history_features.items()
            if hide_own_history or source == self.spec.item_id
        }
        if share_history_embedding:
            for name, source in self.history_features.items():
                self._share_item_table(name, source)
        log_temperature = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_temperature)
        else:
            self.register_buffer("log_temperature", log_temperature)

    def _share_item_table(self, name: str, item_id: str) -> None:
        """Make history feature `name` pool rows of the item tower's table of `item_id`.

        The history's size may be below the item table's (the op sizes it by the largest
        value in train, a vocabulary shared with another column may be larger): its bag is
        rebuilt at the table's size.
        """
        item = self.item_tower.inputs.embeddings[item_id]
        bag = self.user_tower.inputs.embeddings[name]
        rows, width = item.weight.shape
        if bag.weight.shape[1] != width or bag.weight.shape[0] > rows:
            raise ValueError(
                f"share_history_embedding: {name!r} has a {tuple(bag.weight.shape)} table and "
                f"{item_id!r} a {tuple(item.weight.shape)} one; give them one width (and the "
                "history no more rows) or set share_history_embedding=false"
            )
        shared = nn.EmbeddingBag(rows, width, mode=bag.mode, padding_idx=0, sparse=item.sparse)
        shared.weight = item.weight
        self.user_tower.inputs.embeddings[name] = shared

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


def history_features(spec: Any) -> dict[str, str]:
    """User-tower list features of `spec` holding the user's past values of an item-tower
    index feature, each mapped to that feature's name."""
    item_side = {f.name for f in spec.for_input("item_tower") if f.is_index}
    return {
        f.name: f.stats[HISTORY_STAT]
        for f in spec.for_input("user_tower")
        if f.kind == "multi_categorical" and f.stats.get(HISTORY_STAT) in item_side
    }
