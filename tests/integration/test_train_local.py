"""The training loop on the local backend (no Ray): full runs on a small processed data set."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from recsys.train.checkpoints import read_checkpoint
from recsys.train.run import TrainConfigError, check_train_config, run_training
from tests.helpers.processed_data import spec, write_processed
from tests.helpers.train_config import train_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_processed(tmp_path_factory.mktemp("processed"))


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _train(data: Path, run_dir: Path, *overrides: str, model: str = "wide_deep") -> dict:
    cfg = train_config(data, run_dir, model, *overrides)
    check_train_config(cfg)
    return run_training(cfg, run_dir)


def test_wide_deep_learns_and_the_same_seed_gives_the_same_metrics(data: Path, tmp_path: Path):
    first = _train(data, tmp_path / "a")
    second = _train(data, tmp_path / "b")
    assert first["best"] > 0.6  # planted signal: well above a constant predictor's 0.5
    assert first["test"]["test/auc"] > 0.6
    # per-user AUC: the planted signal is mostly user x item, so it holds within users too
    assert 0.55 < first["test"]["test/gauc"] < 1.0
    assert all("val/gauc" in h for h in _history(tmp_path / "a"))
    assert second["best"] == pytest.approx(first["best"], abs=1e-6)
    for a, b in zip(_history(tmp_path / "a"), _history(tmp_path / "b"), strict=True):
        for key in a:
            if not key.endswith(("samples_per_s", "seconds")):
                assert a[key] == pytest.approx(b[key], abs=1e-6), key
    other_seed = _train(data, tmp_path / "c", "seed=1")
    assert other_seed["best"] != pytest.approx(first["best"], abs=1e-9)


def test_resume_continues_from_the_saved_epoch(data: Path, tmp_path: Path) -> None:
    # a constant learning rate: a cosine schedule spans the planned epochs, so a run planned
    # for 2 epochs and extended to 3 follows another schedule than one planned for 3
    fixed = ("trainer.patience=0", "trainer.lr_schedule=none")
    straight = tmp_path / "straight"
    _train(data, straight, "trainer.epochs=3", *fixed)
    stopped = tmp_path / "stopped"
    _train(data, stopped, "trainer.epochs=2", *fixed)
    assert len(_history(stopped)) == 2
    _train(data, stopped, "trainer.epochs=3", "resume=true", *fixed)
    resumed = _history(stopped)
    assert [h["epoch"] for h in resumed] == [1, 2, 3]
    assert "resumed from" in (stopped / "progress.log").read_text()
    for key in ("train/loss", "val/auc", "val/logloss"):
        assert resumed[2][key] == pytest.approx(_history(straight)[2][key], abs=1e-6), key


def test_checkpoints_hold_everything_and_load_safely(data: Path, tmp_path: Path) -> None:
    result = _train(data, tmp_path, "trainer.epochs=2")
    last = read_checkpoint(tmp_path / "checkpoints" / "last")
    best = read_checkpoint(tmp_path / "checkpoints" / "best")
    assert last["state"]["epoch"] == 1
    assert best["state"]["epoch"] + 1 == result["best_epoch"]
    assert last["spec"] == spec()
    assert last["config"]["trainer"]["epochs"] == 2
    assert last["model"] and all(isinstance(v, torch.Tensor) for v in last["model"].values())
    assert last["optimizers"][0]["state"]
    assert (tmp_path / "checkpoints" / "last" / "rng_rank0.pt").is_file()


def test_resume_without_a_checkpoint_fails_clearly(data: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainConfigError, match="holds no checkpoint"):
        _train(data, tmp_path, "resume=true")


def test_two_tower_retrieves_better_than_chance(data: Path, tmp_path: Path) -> None:
    result = _train(data, tmp_path, "trainer.epochs=3", "trainer.retrieval_k=20", model="two_tower")
    assert result["metric"] == "val/recall@20"
    # chance: 20 of ~300 catalogue items
    assert result["test"]["test/recall@20"] > 3 * 20 / 300
    assert 0 < result["test"]["test/ndcg@20"] <= result["test"]["test/recall@20"]


def test_bf16_autocast_trains(data: Path, tmp_path: Path) -> None:
    result = _train(data, tmp_path, "precision=bf16", "trainer.epochs=1")
    assert result["precision"] == "bf16"
    assert result["best"] > 0.55


def test_data_without_a_test_split_trains_and_reports_no_test(tmp_path: Path) -> None:
    # preprocess's split.absent=[test] writes no test/: training has nothing to test
    data = write_processed(tmp_path / "data", rows=600)
    shutil.rmtree(data / "test")
    result = _train(data, tmp_path / "run", "trainer.epochs=1")
    assert "test" not in result and result["best_epoch"] == 1
