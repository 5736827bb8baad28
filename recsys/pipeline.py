"""`python -m recsys.pipeline` (what `make demo` runs): the main job on embedded defaults.

Stages so far: generate RecSys 2021 data. Feature engineering, training, export and the
serving smoke test join as their issues land. With `resume=true` (the default) a stage whose
output exists and was made with the same settings is reused instead of redone.
"""

import logging
import time
from dataclasses import asdict
from pathlib import Path

import hydra
from omegaconf import DictConfig

from recsys.cli import run_task
from recsys.config import CONF_DIR, register_configs
from recsys.data.generator import (
    GenerateSummary,
    format_summary,
    generate,
    load_summary,
    settings_from_dataset,
)

log = logging.getLogger(__name__)
register_configs()


def stage_generate(cfg: DictConfig) -> GenerateSummary:
    settings = settings_from_dataset(cfg.dataset, rows=cfg.pipeline.rows, seed=cfg.seed)
    settings.validate()
    out = Path(cfg.pipeline.work_dir) / "recsys2021"
    earlier = load_summary(out) if cfg.resume else None
    if earlier is not None and earlier.settings == asdict(settings):
        log.info("[generate] reusing %s (same settings; resume=false regenerates)", out)
        return earlier
    log.info("[generate] %s rows (seed %d) -> %s", f"{settings.rows:,}", settings.seed, out)
    return generate(settings, out, overwrite=True)


def run_pipeline(cfg: DictConfig) -> dict[str, object]:
    t0 = time.perf_counter()
    summary = stage_generate(cfg)
    log.info(format_summary(summary))
    log.info("pipeline finished in %.1f s", time.perf_counter() - t0)
    return {"generate": summary}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="pipeline")
def main(cfg: DictConfig) -> None:
    run_task(run_pipeline, cfg)


if __name__ == "__main__":
    main()
