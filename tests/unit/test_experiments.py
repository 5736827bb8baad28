"""Every command of every experiment under experiments/ composes (a typo fails here, not
after an hour of preprocessing), and the results table is built from real run files."""

import json
import shlex
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from recsys.config import CONF_DIR, register_configs

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments"))
import record  # noqa: E402

register_configs()
EXPERIMENTS = sorted(p.parent.name for p in (REPO / "experiments").glob("*/experiment.yaml"))
CONFIG_OF = {
    "recsys.generate": "generate",
    "recsys.preprocess": "preprocess",
    "recsys.train": "train",
    "recsys.pipeline": "pipeline",
}


def test_the_five_experiments_are_there() -> None:
    assert {
        "recsys2021_wnd",
        "recsys2021_two_tower",
        "recsys2021_deepfm",
        "criteo_deepfm",
        "sweep_model_precision_seed",
    } <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_command_composes(name: str) -> None:
    spec, variables = record.load(name, [])
    readme = (REPO / "experiments" / name / "README.md").read_text()
    assert record.BEGIN in readme and record.END in readme
    for step in spec["steps"]:
        argv = shlex.split(step["cmd"].format(**variables))
        assert argv[:2] == ["python", "-m"], step
        if argv[2] not in CONFIG_OF:
            continue
        overrides = [a for a in argv[3:] if a != "-m" and not a.startswith("hydra.")]
        # a sweep composes with the first value of each swept key
        overrides = [o.split(",")[0] if "," in o and "[" not in o else o for o in overrides]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name=CONFIG_OF[argv[2]], overrides=overrides)
        assert cfg.task_name == CONFIG_OF[argv[2]]


def test_unknown_variable_is_refused() -> None:
    with pytest.raises(SystemExit, match="--set 'nope=1'"):
        record.load("recsys2021_wnd", ["nope=1"])


def test_results_row_comes_from_the_run_files(tmp_path: Path) -> None:
    (tmp_path / "result.json").write_text(
        json.dumps({"metric": "val/auc", "best": 0.61, "best_epoch": 2, "test": {"test/auc": 0.6}})
    )
    lines = [{"epoch": e, "train/samples_per_s": 1000.0 * e} for e in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    row = record.run_row(tmp_path, "wide_deep", 12.5)
    assert row["best"] == "val/auc 0.6100 (epoch 2)"
    assert row["test/auc"] == 0.6
    assert row["samples/s"] == 2000.0
    table = record.markdown([row])
    assert "| wide_deep | 2 | val/auc 0.6100 (epoch 2) | 0.6000 | 2,000 | 12 |" in table
