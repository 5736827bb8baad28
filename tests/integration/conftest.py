"""Fixtures shared by the export tests: processed data (no Spark) and trained runs."""

from pathlib import Path

import pytest

from recsys.train.run import run_training
from tests.helpers.bundle_data import write_bundle_data
from tests.helpers.train_config import train_config


@pytest.fixture(scope="session")
def export_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"data": processed dir, "wide_deep" | "deepfm" | "two_tower": run dir}, trained on the
    local backend (tests/helpers/bundle_data.py's planted clusters; a few seconds each)."""
    root = tmp_path_factory.mktemp("export")
    data = write_bundle_data(root / "data")
    runs = {"data": data}
    for model, epochs in (("wide_deep", 1), ("deepfm", 1), ("two_tower", 3)):
        run_dir = root / model
        run_training(train_config(data, run_dir, model, f"trainer.epochs={epochs}"), run_dir)
        runs[model] = run_dir
    return runs
