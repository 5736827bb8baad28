"""experiments/demo_figures/run.py reads its figures from the pipeline's stage markers."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# loaded by path under its own name: other experiments have a run.py too
_SPEC = importlib.util.spec_from_file_location(
    "demo_figures_run", REPO / "experiments" / "demo_figures" / "run.py"
)
assert _SPEC is not None and _SPEC.loader is not None
demo_figures = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(demo_figures)


def _marker(work: Path, name: str, details: dict) -> None:
    (work / "_stages").mkdir(parents=True, exist_ok=True)
    record = {"name": name, "seconds": 1.0, "reused": False, "line": "", "details": details}
    (work / "_stages" / f"{name}.json").write_text(json.dumps({"key": "k", "record": record}))


def _train(model: str, auc: float) -> dict:
    return {"model": model, "run_dir": "/x", "result": {"test": {"test/auc": auc}}}


def test_figures_come_from_the_markers(tmp_path: Path) -> None:
    _marker(tmp_path, "generate", {"summary": {"best_auc": {"test": 0.78}}})
    _marker(tmp_path, "train_ranker", _train("deepfm", 0.71))
    _marker(tmp_path, "train_baseline", _train("logistic", 0.6961))
    metrics = {
        "blend": {"recall@10": 0.05, "recall@50": 0.10},
        "popularity": {"recall@10": 0.03, "recall@50": 0.07},
    }
    _marker(tmp_path, "evaluate", {"report": {"users": 500, "metrics": metrics}})
    got = demo_figures.figures(tmp_path, 100_000)
    assert got[0] == {"figure": "best_achievable_test_auc", "rows": 100_000, "value": 0.78}
    aucs = {(f["role"], f["model"]): f["value"] for f in got if f["figure"] == "test_auc"}
    assert aucs == {("ranker", "deepfm"): 0.71, ("baseline", "logistic"): 0.6961}
    gaps = {f["role"]: f["value"] for f in got if f["figure"] == "gap_closed"}
    assert gaps["ranker"] == pytest.approx(0.75) and gaps["baseline"] == pytest.approx(0.7004)
    recall = {f["method"]: f["value"] for f in got if f["figure"] == "recall@50"}
    assert recall == {"blend": 0.10, "popularity": 0.07}


def test_a_run_that_stopped_after_train_gives_the_auc_figures_only(tmp_path: Path) -> None:
    _marker(tmp_path, "train_ranker", _train("wide_deep", 0.69))
    got = demo_figures.figures(tmp_path, 1_000_000)
    # no generator summary: no best AUC, so no gap share either
    assert got == [
        {"figure": "test_auc", "rows": 1_000_000, "role": "ranker", "model": "wide_deep",
         "value": 0.69},
    ]  # fmt: skip
    assert math.isnan(demo_figures.gap_share(0.69, None))
