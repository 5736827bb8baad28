"""Models come from `conf/model/*.yaml` plus the FeatureSpec: the `_target_` is the registry."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from recsys.config import CONF_DIR, register_configs
from recsys.features.feature_spec import FeatureSpec
from recsys.models import build_model, random_batch, train_wrapper

register_configs()
MODEL_OPTIONS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))


def _model_cfg(name: str, overrides: tuple[str, ...] = ()):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[f"model={name}", *overrides]).model


def test_the_four_models_are_registered() -> None:
    assert MODEL_OPTIONS == ["deepfm", "logistic", "two_tower", "wide_deep"]


@pytest.mark.parametrize("name", MODEL_OPTIONS)
def test_every_model_option_builds_from_the_spec_and_trains_a_step(
    name: str, spec: FeatureSpec, tmp_path: Path
) -> None:
    cfg = _model_cfg(name)
    before = OmegaConf.to_yaml(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, spec)
    assert type(model) is get_class(cfg._target_)
    assert model.spec == spec
    assert OmegaConf.to_yaml(cfg) == before  # sizes came from the spec, not the config
    # plain instantiate works too (the spec comes back from the DictConfig Hydra makes of it)
    torch.manual_seed(0)
    direct = instantiate(cfg, spec=spec)
    assert isinstance(direct.spec, FeatureSpec)
    assert {k: v.shape for k, v in direct.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    spec.save(tmp_path)
    assert type(build_model(cfg, tmp_path)) is type(model)
    loss, logits = train_wrapper(model, train_rows=1000)(random_batch(spec, 8))
    assert logits.shape == (8,) and torch.isfinite(loss)


@pytest.mark.parametrize("name", MODEL_OPTIONS)
def test_shared_knobs_reach_the_model(name: str, spec: FeatureSpec) -> None:
    if name == "logistic":
        # its tables are 1 wide: no embedding sizes to set
        with pytest.raises(TypeError, match="embedding_dims"):
            build_model(_model_cfg(name, ("+model.embedding_dims.item=7",)), spec)
        model = build_model(_model_cfg(name, ("model.sparse=true",)), spec)
        tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
        assert tables and all(t.sparse and t.embedding_dim == 1 for t in tables)
        return
    cfg = _model_cfg(name, ("model.sparse=true", "+model.embedding_dims.item=7"))
    if name == "deepfm":
        with pytest.raises(ValueError, match="one embedding size"):
            build_model(cfg, spec)
        return
    model = build_model(cfg, spec)
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert tables and all(t.sparse for t in tables)
    assert any(t.embedding_dim == 7 and t.num_embeddings == spec["item"].size for t in tables)


@pytest.mark.parametrize("name", ["wide_deep", "deepfm", "logistic"])
def test_rankers_take_their_l2_prior_from_the_config(name: str, spec: FeatureSpec) -> None:
    assert build_model(_model_cfg(name, ("model.embedding_l2=12.5",)), spec).embedding_l2 == 12.5
    default = _model_cfg(name).embedding_l2
    assert build_model(_model_cfg(name), spec).embedding_l2 == default >= 0
