"""Logistic regression over the encoded features: the baseline every ranker must beat.

logit = b + sum_f w_f[x_f] + sum_c w_c x_c: each categorical, hashed or cross feature is a
one-hot times a weight vector (a 1-wide embedding table; lists pool with the spec's pooling),
each continuous feature has one weight. It reads the features the spec marks for any of
`inputs` (by default the rankers' `wide` and `deep` features), so it sees exactly what
Wide&Deep and DeepFM see, without any interaction between features.
"""

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from recsys.features.feature_spec import MODEL_INPUTS
from recsys.models.inputs import LinearTerms, as_feature_spec
from recsys.models.train_wrappers import RankerTrain


class LogisticRegression(nn.Module):
    """Ranker: forward(features: Dict[str, Tensor]) -> logits B (no sigmoid, no loss)."""

    __jit_ignored_attributes__ = ("spec",)  # the FeatureSpec stays Python-side
    train_wrapper_class = RankerTrain

    def __init__(
        self,
        spec: Any,
        inputs: Sequence[str] = ("wide", "deep"),
        sparse: bool = False,
        embedding_l2: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec = as_feature_spec(spec)
        wanted = [str(i) for i in inputs]
        bad = sorted(set(wanted) - set(MODEL_INPUTS))
        if bad or not wanted:
            raise ValueError(f"inputs must name some of {MODEL_INPUTS}, got {wanted}")
        features = [f for f in self.spec.features if set(f.inputs) & set(wanted)]
        if not features:
            raise ValueError(f"LogisticRegression needs features marked {wanted} in the spec")
        self.linear = LinearTerms(features, sparse, bias=True)
        self.embedding_l2 = float(embedding_l2)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.linear(features)
