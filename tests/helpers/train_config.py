"""Compose a `train` config for tests (no Hydra app, so paths.output_dir is set by hand)."""

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from recsys.config import CONF_DIR, register_configs

register_configs()

SMALL_MODELS = {
    "wide_deep": ["model.hidden_units=[32,16]"],
    "deepfm": ["model.hidden_units=[32,16]"],
    "two_tower": ["model.tower_units=[32,16]"],
}


def train_config(
    data: Path, run_dir: Path, model: str = "wide_deep", *overrides: str
) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            [
                f"model={model}",
                f"data={data}",
                "trainer.epochs=2",
                "trainer.batch_size=256",
                *SMALL_MODELS[model],
                *overrides,
            ],
        )
    cfg.paths.output_dir = str(run_dir)
    return cfg
