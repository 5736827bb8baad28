"""Models built from a FeatureSpec: logistic regression, Wide&Deep, DeepFM and two-tower,
TorchScript-ready.

model = build_model(cfg.model, spec)     # or hydra.utils.instantiate(cfg.model, spec=spec)
wrapped = train_wrapper(model)           # forward(batch) -> (loss, logits)
scripted = torch.jit.script(model)       # inference only; towers script on their own
"""

from recsys.models.build import build_model
from recsys.models.deepfm import DeepFM, fm_second_order
from recsys.models.inputs import (
    InputLayer,
    LinearTerms,
    as_feature_spec,
    embedding_penalty,
    embedding_tables,
    random_batch,
    split_sparse_parameters,
)
from recsys.models.logistic import LogisticRegression
from recsys.models.mlp import MLP
from recsys.models.train_wrappers import RankerTrain, TwoTowerTrain, train_wrapper
from recsys.models.two_tower import Tower, TwoTower
from recsys.models.wide_deep import WideDeep

__all__ = [
    "MLP",
    "DeepFM",
    "InputLayer",
    "LinearTerms",
    "LogisticRegression",
    "RankerTrain",
    "Tower",
    "TwoTower",
    "TwoTowerTrain",
    "WideDeep",
    "as_feature_spec",
    "build_model",
    "embedding_penalty",
    "embedding_tables",
    "fm_second_order",
    "random_batch",
    "split_sparse_parameters",
    "train_wrapper",
]
