"""The Ray backend: 2 DDP workers against the local backend, and recovery from a worker failure.

One local Ray serves the module (ray.init costs seconds; each TorchTrainer.fit ~10 s more).
"""

import json
from pathlib import Path

import pytest

from recsys.train.run import check_train_config, ensure_ray, run_training, run_trainings
from tests.helpers.processed_data import write_processed
from tests.helpers.train_config import train_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_processed(tmp_path_factory.mktemp("processed"), rows=12_000)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ensure_ray(None)
    yield
    ray.shutdown()


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


COMMON = ("trainer.epochs=2", "trainer.patience=0", "backend.cpus_per_worker=1")


def test_two_ray_workers_match_the_local_backend(data: Path, tmp_path: Path, local_ray) -> None:
    local_cfg = train_config(data, tmp_path / "local", "wide_deep", *COMMON)
    check_train_config(local_cfg)
    local = run_training(local_cfg, tmp_path / "local")
    ray_cfg = train_config(
        data, tmp_path / "ray", "wide_deep", *COMMON, "backend=ray", "backend.num_workers=2"
    )
    check_train_config(ray_cfg)
    distributed = run_training(ray_cfg, tmp_path / "ray")
    assert distributed["workers"] == 2
    assert local["best"] > 0.6 and distributed["best"] > 0.6
    assert distributed["best"] == pytest.approx(local["best"], abs=0.01)
    assert distributed["test"]["test/auc"] == pytest.approx(local["test"]["test/auc"], abs=0.01)
    assert (tmp_path / "ray" / "checkpoints" / "best" / "model.pt").is_file()
    assert len(_history(tmp_path / "ray")) == 2


def test_a_failed_worker_is_recovered_from_the_last_checkpoint_of_its_own_training(
    data: Path, tmp_path: Path, local_ray
) -> None:
    """Two trainings share one worker group; the second fails once in its second epoch.

    Ray restarts the group: the finished first training is not run again, and the second
    resumes from its own checkpoint (not from the first training's, which Ray also holds).
    """
    settings = (*COMMON, "backend=ray", "backend.num_workers=2", "backend.max_failures=1")
    first, second = tmp_path / "first", tmp_path / "second"
    jobs = [
        (train_config(data, first, "wide_deep", *settings), first),
        (train_config(data, second, "deepfm", *settings), second),
    ]
    marker = tmp_path / "failed-once"
    results = run_trainings(
        jobs, fail_once_at={"job": 1, "epoch": 1, "step": 3, "rank": 1, "marker": str(marker)}
    )
    assert marker.exists()  # the failure did happen
    assert [r["epochs_run"] for r in results] == [2, 2]
    assert results[0]["best"] > 0.6 and results[1]["best"] > 0.6
    assert [h["epoch"] for h in _history(first)] == [1, 2]
    assert [h["epoch"] for h in _history(second)] == [1, 2]
    first_log, second_log = (d.joinpath("progress.log").read_text() for d in (first, second))
    assert first_log.count("training WideDeep") == 1 and "resumed" not in first_log
    assert "training DeepFM" in second_log and "resumed from" in second_log
    # one worker group: Ray's run files only under the first training's directory
    assert (first / "ray").is_dir() and not (second / "ray").exists()
