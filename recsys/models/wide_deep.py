"""Wide&Deep (Cheng et al. 2016, "Wide & Deep Learning for Recommender Systems").

logit = wide(x) + deep(x): a linear model over the features the spec marks `wide` (one-hot
and cross features, continuous values) plus an MLP over the embeddings and dense vector of
the features it marks `deep`. The constructor's defaults are BigDL Friesian's RecSys 2021
model (deep hidden units [1024, 1024], embedding dim 8, no prior); `conf/model/wide_deep.yaml`
holds the defaults chosen on validation AUC.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from recsys.models.inputs import InputLayer, LinearTerms, as_feature_spec, check_embedding_dims
from recsys.models.mlp import MLP
from recsys.models.train_wrappers import RankerTrain


class WideDeep(nn.Module):
    """Ranker: forward(features: Dict[str, Tensor]) -> logits B (no sigmoid, no loss)."""

    __jit_ignored_attributes__ = ("spec",)  # the FeatureSpec stays Python-side
    train_wrapper_class = RankerTrain

    def __init__(
        self,
        spec: Any,
        embedding_dim: int = 8,
        hidden_units: Sequence[int] = (1024, 1024),
        dropout: float = 0.0,
        batch_norm: bool = False,
        sparse: bool = False,
        embedding_dims: Mapping[str, int] | None = None,
        embedding_l2: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec = as_feature_spec(spec)
        # an L2 prior on the embedding tables that RankerTrain adds to the loss
        self.embedding_l2 = float(embedding_l2)
        dims = check_embedding_dims(self.spec, embedding_dims)
        deep = self.spec.for_input("deep")
        if not deep:
            raise ValueError("WideDeep needs features marked 'deep' in the spec")
        wide = self.spec.for_input("wide")
        self.deep_inputs = InputLayer(deep, int(embedding_dim), dims, sparse)
        self.deep = MLP(
            self.deep_inputs.output_dim, hidden_units, float(dropout), bool(batch_norm), 1
        )
        # the deep MLP's output layer has the bias; the wide part needs none of its own
        self.wide: LinearTerms | None = LinearTerms(wide, sparse, bias=False) if wide else None

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        logits = self.deep(self.deep_inputs(features)).squeeze(-1)
        if self.wide is not None:
            logits = logits + self.wide(features)
        return logits
