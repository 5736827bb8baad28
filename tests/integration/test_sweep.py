"""A Hydra multirun of `recsys.train` (2 x 2 overrides) and its report; a failing job does not
stop the sweep."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.processed_data import write_processed

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_a_two_by_two_sweep_gives_four_runs_and_a_report(tmp_path: Path) -> None:
    data = write_processed(tmp_path / "data", rows=3000)
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys.train",
            "-m",
            "model=wide_deep,deepfm",
            "trainer.batch_size=256,0",
            f"data={data}",
            "trainer.epochs=1",
            "model.hidden_units=[16]",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert jobs == ["0", "1", "2", "3"]
    failed = sorted(p.name for p in sweep.iterdir() if (p / "error.txt").is_file())
    assert len(failed) == 2  # the batch_size=0 jobs, one per model
    for job in failed:
        assert "trainer.batch_size must be >= 1" in (sweep / job / "error.txt").read_text()

    report = subprocess.run(
        [sys.executable, "-m", "recsys.report", str(sweep)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    assert "model=deepfm trainer.batch_size=256" in report.stdout
    with (sweep / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 2 and all(float(r["best"]) > 0.5 for r in ok)
    assert all(r["status"].startswith("failed") for r in rows if r not in ok)
    assert (sweep / "report.png").stat().st_size > 1000


def test_an_optuna_sweep_runs_trials_and_reports_the_best(tmp_path: Path) -> None:
    data = write_processed(tmp_path / "data", rows=3000)
    sweep = tmp_path / "optuna"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys.train",
            "hparams_search=optuna",
            f"data={data}",
            "trainer.epochs=1",
            "hydra.sweeper.n_trials=3",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "result.json").is_file())
    assert jobs == ["0", "1", "2"]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"trainer.lr", "model.embedding_dim", "model.hidden_units"}
    assert 0.5 < best["best_value"] <= 1.0
