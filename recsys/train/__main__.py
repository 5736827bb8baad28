"""`python -m recsys.train model=wide_deep backend=ray data=data/recsys2021_wnd`.

Sweeps: `python -m recsys.train -m model=wide_deep,deepfm precision=fp32,bf16 seed=0,1`;
then `python -m recsys.report outputs/train/multiruns/<time>`.
"""

import math
from pathlib import Path

import hydra
from omegaconf import DictConfig

from recsys.cli import run_task
from recsys.config import CONF_DIR, register_configs
from recsys.train.run import check_train_config, run_training

register_configs()


def train_from_config(cfg: DictConfig) -> float:
    """Train; return the best value of the watched validation metric (what sweepers optimise)."""
    result = run_training(cfg, Path(cfg.paths.output_dir))
    return float(result["best"]) if result["best"] is not None else math.nan


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    best = run_task(train_from_config, cfg, check=check_train_config)
    # a failed sweep job returns NaN, which Optuna records as a failed trial
    return math.nan if best is None else best


if __name__ == "__main__":
    main()
