"""DeepFM (Guo et al. 2017, "DeepFM: A Factorization-Machine based Neural Network for CTR
Prediction").

The fields are the features the spec marks `deep`; each has one k-wide embedding shared by
the FM and the deep part (a continuous field embeds as x * v_field).
logit = first order + FM second order + deep MLP over the flattened field embeddings.
The first-order term covers the fields and, with `wide_first_order`, the features marked
`wide` too (crosses and one-hots meant for a linear model).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from recsys.models.inputs import (
    EMBEDDING_INIT_BOUND,
    InputLayer,
    LinearTerms,
    as_feature_spec,
    check_embedding_dims,
)
from recsys.models.mlp import MLP
from recsys.models.train_wrappers import RankerTrain


def fm_second_order(embeddings: Tensor) -> Tensor:
    """sum_{i<j} <e_i, e_j> over the fields of B x F x k embeddings -> B, in O(F k):
    0.5 * sum_k [(sum_i e_ik)^2 - sum_i e_ik^2]."""
    square_of_sum = embeddings.sum(dim=1).pow(2)
    sum_of_squares = embeddings.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)


class DenseFieldEmbedding(nn.Module):
    """Continuous features as FM fields: B x C values -> B x C x k, row c = x_c * v_c."""

    names: list[str]

    def __init__(self, names: Sequence[str], dim: int) -> None:
        super().__init__()
        self.names: list[str] = list(names)
        self.weight = nn.Parameter(torch.empty(len(self.names), dim))
        nn.init.uniform_(self.weight, -EMBEDDING_INIT_BOUND, EMBEDDING_INIT_BOUND)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        values = torch.stack([features[name] for name in self.names], dim=1)
        return values.unsqueeze(-1) * self.weight


class DeepFM(nn.Module):
    """Ranker: forward(features: Dict[str, Tensor]) -> logits B (no sigmoid, no loss)."""

    __jit_ignored_attributes__ = ("spec",)  # the FeatureSpec stays Python-side
    train_wrapper_class = RankerTrain

    def __init__(
        self,
        spec: Any,
        embedding_dim: int = 8,
        hidden_units: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        batch_norm: bool = False,
        sparse: bool = False,
        embedding_dims: Mapping[str, int] | None = None,
        wide_first_order: bool = True,
        embedding_l2: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec = as_feature_spec(spec)
        # an L2 prior on the embedding tables that RankerTrain adds to the loss
        self.embedding_l2 = float(embedding_l2)
        dims = check_embedding_dims(self.spec, embedding_dims)
        k = int(embedding_dim)
        uneven = sorted(name for name, dim in dims.items() if dim != k)
        if uneven:
            raise ValueError(
                f"DeepFM shares one embedding size across its fields (embedding_dim={k}); "
                f"embedding_dims gives other sizes for {uneven}"
            )
        fields = self.spec.for_input("deep")
        if not fields:
            raise ValueError("DeepFM needs features marked 'deep' in the spec (its fields)")
        first_order = list(fields)
        if wide_first_order:
            names = {f.name for f in fields}
            first_order += [f for f in self.spec.for_input("wide") if f.name not in names]
        index = [f for f in fields if f.is_index]
        self.fields: InputLayer | None = InputLayer(index, k, sparse=sparse) if index else None
        dense = [f.name for f in fields if f.kind == "continuous"]
        self.dense_fields: DenseFieldEmbedding | None = (
            DenseFieldEmbedding(dense, k) if dense else None
        )
        self.num_fields = len(fields)
        self.linear = LinearTerms(first_order, sparse)
        self.deep = MLP(self.num_fields * k, hidden_units, float(dropout), bool(batch_norm), 1)

    def field_embeddings(self, features: dict[str, Tensor]) -> Tensor:
        """B x F x k: the index fields in spec order, then the continuous ones."""
        parts: list[Tensor] = []
        if self.fields is not None:
            parts.append(torch.stack(self.fields.embed(features), dim=1))
        if self.dense_fields is not None:
            parts.append(self.dense_fields(features))
        return torch.cat(parts, dim=1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        embeddings = self.field_embeddings(features)
        deep = self.deep(embeddings.flatten(1)).squeeze(-1)
        return self.linear(features) + fm_second_order(embeddings) + deep
