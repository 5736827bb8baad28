"""`python -m serving.feature_store.load bundle=<dir> redis_url=redis://host:6379/0`

Writes a bundle's user and item features (both snapshots) into Redis under
`<redis_prefix>:<bundle id>:...` (serving/feature_store/redis_store.py), so servers started
with `feature_store=redis` read them. Takes the serve config (conf/serve.yaml): the same
`bundle`, `redis_url` and `redis_prefix` keys as the server.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from recsys.cli import run_task
from recsys.config import CONF_DIR, register_configs
from recsys.export.reader import load_bundle
from serving.errors import ServeConfigError
from serving.feature_store.base import MemoryFeatureStore
from serving.feature_store.layout import ENTITIES, SNAPSHOTS
from serving.feature_store.redis_store import write_features
from serving.model import bundle_id

log = logging.getLogger(__name__)
register_configs()


def load_into_redis(bundle_dir: str | Path, url: str, prefix: str) -> dict[str, int]:
    """Write every snapshot table of the bundle at `bundle_dir`; return rows per table."""
    t0 = time.perf_counter()
    bundle = load_bundle(bundle_dir)
    memory = MemoryFeatureStore(bundle)
    ident = bundle_id(bundle_dir)
    tables = []
    for snapshot in SNAPSHOTS:
        for entity in ENTITIES:
            ids, records = memory.all_records(snapshot, entity)
            tables.append((memory.layout(snapshot, entity), ids, records))
    rows = write_features(url, prefix, ident, tables)
    log.info(
        "bundle %s (id %s) -> %s prefix %s: %s in %.1f s",
        bundle_dir,
        ident,
        url,
        prefix,
        rows,
        time.perf_counter() - t0,
    )
    return rows


def load_from_config(cfg: DictConfig) -> dict[str, int]:
    rows = load_into_redis(str(cfg.bundle), str(cfg.redis_url), str(cfg.redis_prefix))
    print(f"loaded {sum(rows.values()):,} rows of {cfg.bundle} into {cfg.redis_url}: {rows}")
    return rows


def check_load(cfg: DictConfig) -> None:
    if not Path(str(cfg.bundle)).is_dir():
        raise ServeConfigError(f"bundle={cfg.bundle} is not a directory")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="serve")
def main(cfg: DictConfig) -> None:
    run_task(load_from_config, cfg, check=check_load)


if __name__ == "__main__":
    main()
