"""`python -m recsys.pipeline` end to end on a tiny configuration, as `make demo` runs it.

One run does every stage (generate, Spark features, training, export, evaluation, the gRPC
server and real Recommend calls); a second run reuses every stage; a third is interrupted
with SIGINT mid-way and must leave no half-written output and no process behind. The local
backend keeps the test inside the CI budget (Ray Train has its own tests).
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "pipeline.rows=3000",
    "dataset.num_users=300",
    "dataset.num_tweets=800",
    "dataset.num_hashtags=50",
    "backend=local",
    "trainer.epochs=1",
    "trainer.batch_size=512",
    "pipeline.smoke.users=2",
    "pipeline.smoke.k=5",
]


def _pipeline(
    work: Path, run: Path, *extra: str, timeout: int = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys.pipeline",
            *TINY,
            f"pipeline.work_dir={work}",
            f"hydra.run.dir={run}",
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found |= {child, *_descendants(child)}
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _leftovers(work: Path) -> list[Path]:
    return [p for p in work.rglob("*") if ".tmp-" in p.name]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    base = tmp_path_factory.mktemp("pipeline")
    work, run = base / "work", base / "run1"
    proc = _pipeline(work, run)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, run, proc.stdout + proc.stderr


def test_every_stage_runs_and_the_server_answers(first_run: tuple[Path, Path, str]) -> None:
    work, _, out = first_run
    for step, stage in enumerate(("generate", "features", "train", "export", "evaluate", "serve")):
        assert f"[{step + 1}/6] {stage} done" in out, out
    # two known users get k items each, the unknown one the popularity fallback
    answers = re.findall(r"^  user (\S+?)\.\.( \[popularity fallback\])? \(", out, re.M)
    assert len(answers) == 3, out
    assert [bool(flag) for _, flag in answers] == [False, False, True]
    assert (work / "bundle" / "manifest.json").is_file()
    assert _leftovers(work) == []


def test_report_holds_the_printed_numbers(first_run: tuple[Path, Path, str]) -> None:
    _, run, out = first_run
    report = (run / "report.md").read_text()
    headline = [line for line in out.splitlines() if line.startswith(("ranker (", "Recall@"))]
    assert len(headline) == 2, out
    for line in headline:
        assert f"- {line}" in report
    # each stage's time as the console printed it
    for stage, seconds in re.findall(r"\] (\w+) done \((\d+\.\d) s\)", out):
        assert f"| {stage} | {seconds} | no |" in report
    assert (run / "report.html").read_text().count("<table>") >= 4
    assert (run / "curves_ranker.png").stat().st_size > 1000
    auc = float(re.search(r"test AUC (\d\.\d+)", headline[0]).group(1))
    assert 0.0 < auc <= 1.0


def test_a_second_run_reuses_every_stage(first_run: tuple[Path, Path, str]) -> None:
    work, run, _ = first_run
    proc = _pipeline(work, run.parent / "run2", "pipeline.stages=[generate,features,train,export]")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for stage in ("generate", "features", "train", "export"):
        assert re.search(rf"\] {stage} done \(reused\)", out), out


def test_ctrl_c_leaves_no_partial_output_and_no_process(tmp_path: Path) -> None:
    # interrupted while the ranker trains (Spark has been stopped after the features stage;
    # Ctrl-C during Spark's own work is not covered: see the README's known issues)
    work = tmp_path / "work"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recsys.pipeline",
            *TINY,
            f"pipeline.work_dir={work}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    children: set[int] = set()
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if "ranker wide_deep" in line:
            time.sleep(2)
            children = _descendants(proc.pid)
            os.kill(proc.pid, signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=120)
    output = "".join(seen) + (rest or "")
    assert "interrupted" in output, output
    # exit code 130, or killed by SIGINT (-2): a shell reports both as $? = 130. Twice in CI
    # the process printed "interrupted" (the handler ran) and still ended by SIGINT during
    # interpreter shutdown; the cause was not found
    assert proc.returncode in (130, -signal.SIGINT), output
    assert _leftovers(work) == []
    assert (work / "recsys2021_wnd" / "feature_spec.json").is_file()  # finished stages stay
    assert not (work / "runs" / "ranker").exists()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in children):
        time.sleep(0.5)
    assert [p for p in children if _alive(p)] == []
