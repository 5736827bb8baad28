"""Fixtures shared by integration tests: processed data (no Spark) and trained runs for the
export tests; one whole tiny pipeline run for the pipeline and Ctrl-C tests."""

from pathlib import Path

import pytest

from recsys.train.run import run_training
from tests.helpers.bundle_data import write_bundle_data
from tests.helpers.pipeline_run import run_pipeline
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


@pytest.fixture(scope="session")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(work dir, run dir, console output) of one whole `recsys.pipeline` run on the tiny
    configuration (tests/helpers/pipeline_run.py). Tests that change the work dir copy it."""
    base = tmp_path_factory.mktemp("pipeline")
    work, run = base / "work", base / "run1"
    proc = run_pipeline(work, run)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, run, proc.stdout + proc.stderr
