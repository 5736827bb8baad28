"""`python -m recsys.report`: a sweep's table shows each job's best-epoch validation values."""

import csv
import json
from pathlib import Path

import pytest

from recsys.report import main, report

# val/auc peaks at epoch 2 then falls (early stopping's usual picture)
HISTORY = [
    {"epoch": 1, "train/loss": 0.69, "val/auc": 0.61, "val/logloss": 0.68},
    {"epoch": 2, "train/loss": 0.65, "val/auc": 0.66, "val/logloss": 0.66},
    {"epoch": 3, "train/loss": 0.60, "val/auc": 0.63, "val/logloss": 0.70},
]


def _job(sweep: Path, name: str, overrides: list[str], result: dict | None) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in HISTORY))
    if result is not None:
        (job / "result.json").write_text(json.dumps(result))


def _sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    result = {"metric": "val/auc", "best": 0.66, "best_epoch": 2, "test": {"test/auc": 0.65}}
    _job(sweep, "0", ["model=wide_deep", "seed=0"], result)
    _job(sweep, "1", ["model=deepfm", "seed=0"], None)  # still running: no result.json
    return sweep


def test_the_table_shows_the_best_epochs_validation_values(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    _, rows = report(sweep)
    done, running = rows
    assert (done["val_epoch"], done["val/auc"], done["val/logloss"]) == (2, 0.66, 0.66)
    assert done["best"] == done["val/auc"] and done["test/auc"] == 0.65
    # without a result the best epoch is unknown: the last one, said in val_epoch
    assert (running["status"], running["val_epoch"], running["val/auc"]) == ("incomplete", 3, 0.63)
    with (sweep / "report.csv").open() as f:
        written = list(csv.DictReader(f))
    assert [(r["val_epoch"], r["val/auc"]) for r in written] == [("2", "0.66"), ("3", "0.63")]
    assert [r["overrides"] for r in written] == ["model=wide_deep", "model=deepfm"]


def test_the_printed_table_holds_the_best_epoch_values(tmp_path: Path, capsys) -> None:
    main([str(_sweep(tmp_path))])
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    first = dict(zip(header, lines[1].split(), strict=False))
    assert (first["val_epoch"], first["val/auc"], first["val/logloss"]) == ("2", "0.6600", "0.6600")


def test_a_directory_without_jobs_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no job directories"):
        report(tmp_path)
