"""`python -m recsys.generate rows=100000 seed=0 out=data/recsys2021`: raw RecSys 2021 data."""

import logging

import hydra
from omegaconf import DictConfig

from recsys.cli import run_task
from recsys.config import CONF_DIR, register_configs
from recsys.data.generator import (
    GenerateSummary,
    format_summary,
    generate,
    settings_from_dataset,
)
from recsys.errors import RecsysError

log = logging.getLogger(__name__)
register_configs()


def require_generator_dataset(cfg: DictConfig) -> None:
    if "rows" not in cfg.dataset:
        raise RecsysError(
            f"dataset={cfg.dataset.name} describes data on disk, not a generator; "
            "use dataset=recsys2021_dummy"
        )


def generate_from_config(cfg: DictConfig) -> GenerateSummary:
    """Rows, signal and seed from the top level, every other knob from `dataset`."""
    require_generator_dataset(cfg)
    settings = settings_from_dataset(cfg.dataset, rows=cfg.rows, signal=cfg.signal, seed=cfg.seed)
    settings.validate()
    log.info("generating %s rows (seed %d) into %s", f"{settings.rows:,}", settings.seed, cfg.out)
    summary = generate(
        settings,
        cfg.out,
        overwrite=cfg.overwrite,
        partitions=cfg.partitions,
        workers=cfg.workers,
    )
    log.info(format_summary(summary))
    return summary


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def main(cfg: DictConfig) -> None:
    run_task(generate_from_config, cfg, check=require_generator_dataset)


if __name__ == "__main__":
    main()
