"""The pipeline report's ranker figures: the share of the gap closed, the verdict against the
logistic baseline in words, and the headline and table built from the stage records."""

import math
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from recsys.pipeline import PipelineState, StageRecord
from recsys.run_report import gap_share, headline, ranker_table, versus_baseline


def test_gap_share_is_the_way_from_constant_to_the_true_probabilities() -> None:
    assert gap_share(0.5, 0.78) == 0.0
    assert gap_share(0.78, 0.78) == 1.0
    assert gap_share(0.64, 0.78) == pytest.approx(0.5)
    assert gap_share(0.45, 0.75) == pytest.approx(-0.2)  # worse than constant: negative


@pytest.mark.parametrize("best", [None, math.nan, 0.5, 0.4])
def test_gap_share_is_nan_without_a_usable_best(best: float | None) -> None:
    assert math.isnan(gap_share(0.7, best))


@pytest.mark.parametrize(
    ("ranker", "baseline", "words"),
    [
        (0.700, 0.685, "the ranker beats it by +0.0150"),
        (0.690, 0.686, "the ranker beats it by only +0.0040, short of the 0.01 aimed at"),
        (0.680, 0.686, "the ranker does not beat it (-0.0060)"),
        (0.686, 0.686, "the ranker does not beat it (+0.0000)"),
    ],
)
def test_versus_baseline_says_when_the_ranker_falls_short(
    ranker: float, baseline: float, words: str
) -> None:
    assert versus_baseline(ranker, baseline, "logistic") == f"logistic AUC {baseline:.4f}: {words}"


def _training(model: str, auc: float) -> dict[str, Any]:
    return {
        "model": model,
        "run_dir": "/nowhere",
        "result": {"test": {"test/auc": auc, "test/logloss": 0.65}},
    }


def _state(ranker: float, baseline: float | None, best: float | None = 0.78) -> PipelineState:
    details = {"ranker": _training("deepfm", ranker)}
    if baseline is not None:
        details["baseline"] = _training("logistic", baseline)
    records = {"train": StageRecord("train", 1.0, False, "", details)}
    if best is not None:
        summary = {"summary": {"best_auc": {"test": best}}}
        records["generate"] = StageRecord("generate", 1.0, False, "", summary)
    cfg = OmegaConf.create({"pipeline": {"rows": 100000}})
    state = PipelineState(cfg, Path("/w"), Path("/r"), {}, [], records=records)
    state.baselines = {"constant": {"logloss": 0.69}, "popularity": {"auc": 0.52}}
    return state


def test_headline_shows_the_baseline_and_the_gap_shares() -> None:
    lines = headline(_state(0.64, 0.61))
    assert lines[0].startswith("ranker (deepfm) test AUC 0.6400, log loss 0.6500 | ")
    assert "logistic AUC 0.6100: the ranker beats it by +0.0300" in lines[0]
    assert lines[0].endswith("| best achievable 0.7800")
    assert lines[1] == (
        "gap closed at 100,000 rows, (AUC - 0.5) / (0.7800 - 0.5): ranker 50.0%, logistic 39.3%"
    )


def test_headline_without_baseline_or_generator_leaves_them_out() -> None:
    lines = headline(_state(0.64, None, best=None))
    assert len(lines) == 1
    assert "logistic" not in lines[0] and "best achievable" not in lines[0]


def test_the_report_table_holds_both_models_and_the_verdict() -> None:
    state = _state(0.69, 0.686)
    lines = ranker_table(state, state.records["train"])
    text = "\n".join(lines)
    assert "| deepfm | 0.6900 | 0.6500 | 67.9% |" in text
    assert "| logistic (baseline, same features and loop) | 0.6860 | 0.6500 | 66.4% |" in text
    assert "| true probabilities (generator) | 0.7800 |  | 100.0% |" in text
    assert lines[-1] == (
        "Logistic AUC 0.6860: the ranker beats it by only +0.0040, short of the 0.01 aimed at."
    )
