"""`python -m recsys.export ranker_run=<run dir> retrieval_run=<run dir> out=bundles/demo`."""

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from recsys.cli import run_task
from recsys.config import CONF_DIR, register_configs
from recsys.export.index import IndexSettings
from recsys.export.writer import ExportError, ExportSettings, check_export, export_bundle

register_configs()


def settings_from_config(cfg: DictConfig) -> ExportSettings:
    """The typed settings of an `export` config (conf/export.yaml)."""
    for key in ("ranker_run", "retrieval_run"):
        if OmegaConf.is_missing(cfg, key):
            raise ExportError(f"{key} is not set: pass {key}=<training run directory>")
    index = OmegaConf.to_container(cfg.index, resolve=True)
    return ExportSettings(
        ranker_run=str(cfg.ranker_run),
        retrieval_run=str(cfg.retrieval_run),
        out=str(cfg.out),
        format=str(cfg.format),
        overwrite=bool(cfg.overwrite),
        embed_batch_size=int(cfg.embed_batch_size),
        example_rows=int(cfg.example_rows),
        index=IndexSettings.from_mapping(index),
        blend=OmegaConf.to_object(cfg.blend),
    )


def export_from_config(cfg: DictConfig) -> dict[str, Any]:
    manifest = export_bundle(settings_from_config(cfg))
    print(f"bundle: {Path(cfg.out)}")
    return manifest


def check_from_config(cfg: DictConfig) -> None:
    check_export(settings_from_config(cfg))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    run_task(export_from_config, cfg, check=check_from_config)


if __name__ == "__main__":
    main()
