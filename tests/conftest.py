"""Fixtures shared across test tiers.

Spark starts once per test session (`spark`), and only when an integration test asks for it:
a local SparkSession takes 5-15 s to start on two cores, so every Spark test shares it.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from recsys.config import CONF_DIR, register_configs
from recsys.data.criteo_format import SAMPLE_PATH

REPO = Path(__file__).resolve().parents[1]
CRITEO_SAMPLE = SAMPLE_PATH
"""The 200-row Criteo-layout sample in the repository (recsys/data/samples/criteo_sample.txt),
written by recsys.data.criteo_format; conf/dataset/criteo_sample.yaml points at it."""

register_configs()


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    from recsys.features.spark import build_spark

    session = build_spark(
        {
            "master": "local[2]",
            "shuffle_partitions": 2,
            "log_level": "ERROR",
            "driver_memory": "2g",
            "jvm_options": "-XX:TieredStopAtLevel=1",  # as conf/preprocess.yaml: faster warm-up
        }
    )
    yield session
    session.stop()


def compose_preprocess(overrides: list[str], run_dir: Path) -> DictConfig:
    """The `preprocess` config as the entry point would see it (run directory in tmp)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="preprocess", overrides=overrides)
    cfg.paths.output_dir = str(run_dir)
    return cfg


@pytest.fixture(scope="session")
def recsys_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small generated RecSys 2021 data (train/ and test/ parquet), shared by the tests."""
    from recsys.data.generator import GeneratorSettings, generate

    out = tmp_path_factory.mktemp("raw") / "recsys2021"
    settings = GeneratorSettings(
        rows=4000, num_users=300, num_tweets=600, num_hashtags=40, num_domains=20, seed=3
    )
    generate(settings, out, workers=1)
    return out
