"""Building a model from its Hydra config and the fitted FeatureSpec."""

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from recsys.models.inputs import as_feature_spec


def build_model(model_cfg: Any, spec: Any) -> nn.Module:
    """`model_cfg` (a `conf/model/<name>.yaml` node, or a dict with `_target_`) built with the
    sizes of `spec` (a FeatureSpec, or a path to `feature_spec.json`).

    Equivalent to `hydra.utils.instantiate(model_cfg, spec=spec)`, which also works; this
    keeps the spec out of OmegaConf (no round trip through a DictConfig) and hands the model
    plain lists and dicts.
    """
    if isinstance(model_cfg, DictConfig):
        model_cfg = OmegaConf.to_container(model_cfg, resolve=True)
    factory = instantiate(model_cfg, _partial_=True, _convert_="all")
    return factory(spec=as_feature_spec(spec))
