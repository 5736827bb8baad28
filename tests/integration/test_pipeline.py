"""`python -m recsys.pipeline` end to end on a tiny configuration, as `make demo` runs it.

One run does every stage (generate, Spark features, training, export, evaluation, the gRPC
server and real Recommend calls; the `first_run` fixture, shared with the Ctrl-C tests in
test_faults_interrupt.py); a second run reuses every stage. The local backend keeps the test
inside the CI budget (Ray Train has its own tests).
"""

import re
from pathlib import Path

import pytest

from tests.helpers.pipeline_run import leftovers, run_pipeline

pytestmark = pytest.mark.integration


def test_every_stage_runs_and_the_server_answers(first_run: tuple[Path, Path, str]) -> None:
    work, _, out = first_run
    for step, stage in enumerate(("generate", "features", "train", "export", "evaluate", "serve")):
        assert f"[{step + 1}/6] {stage} done" in out, out
    # two known users get k items each, the unknown one the popularity fallback
    answers = re.findall(r"^  user (\S+?)\.\.( \[popularity fallback\])? \(", out, re.M)
    assert len(answers) == 3, out
    assert [bool(flag) for _, flag in answers] == [False, False, True]
    assert (work / "bundle" / "manifest.json").is_file()
    assert leftovers(work) == []


def test_report_holds_the_printed_numbers(first_run: tuple[Path, Path, str]) -> None:
    _, run, out = first_run
    report = (run / "report.md").read_text()
    headline = [
        line for line in out.splitlines() if line.startswith(("ranker (", "gap closed", "Recall@"))
    ]
    assert len(headline) == 3, out
    for line in headline:
        assert f"- {line}" in report
    # each stage's time as the console printed it
    for stage, seconds in re.findall(r"\] (\w+) done \((\d+\.\d) s\)", out):
        assert f"| {stage} | {seconds} | no |" in report
    assert (run / "report.html").read_text().count("<table>") >= 4
    assert (run / "curves_ranker.png").stat().st_size > 1000
    assert (run / "curves_baseline.png").stat().st_size > 1000
    auc = float(re.search(r"test AUC (\d\.\d+)", headline[0]).group(1))
    assert 0.0 < auc <= 1.0
    # the logistic baseline trained beside the ranker, the difference said in words
    logistic = float(re.search(r"\| logistic AUC (\d\.\d+): the ranker ", headline[0]).group(1))
    assert 0.0 < logistic <= 1.0
    best = float(re.search(r"best achievable (\d\.\d+)", headline[0]).group(1))
    shares = re.search(r"ranker (-?\d+\.\d)%, logistic (-?\d+\.\d)%", headline[1])
    assert float(shares.group(1)) == pytest.approx(100 * (auc - 0.5) / (best - 0.5), abs=0.1)
    assert float(shares.group(2)) == pytest.approx(100 * (logistic - 0.5) / (best - 0.5), abs=0.1)
    assert "| logistic (baseline, same features and loop) |" in report


def test_a_second_run_reuses_every_stage(first_run: tuple[Path, Path, str]) -> None:
    work, run, _ = first_run
    proc = run_pipeline(
        work, run.parent / "run2", "pipeline.stages=[generate,features,train,export]"
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for stage in ("generate", "features", "train", "export"):
        assert re.search(rf"\] {stage} done \(reused\)", out), out
