"""The command-line entry points as a user runs them (subprocesses, real Hydra apps)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SMALL = ["dataset.num_users=300", "dataset.num_tweets=800", "dataset.num_hashtags=50"]


def _run(module: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generate_writes_data_and_records_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = tmp_path / "data"
    proc = _run(
        "recsys.generate",
        "rows=3000",
        "seed=0",
        f"out={out}",
        f"hydra.run.dir={run_dir}",
        *SMALL,
    )
    assert proc.returncode == 0, proc.stderr
    assert "generated 3,000 rows" in proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["_generator.json", "_truth", "test", "train"]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["config"]["rows"] == 3000
    assert info["config"]["seed"] == 0
    assert "rows=3000" in info["overrides"]
    assert info["git_sha"]
    assert info["packages"]["pyarrow"] != "absent"
    assert (run_dir / ".hydra" / "config.yaml").is_file()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("dataset.rows=abc", "dataset.rows"),
        ("rows=0", "error: rows must be a positive integer"),
        ("dataset=recsys2021", "not a generator"),
    ],
)
def test_bad_input_fails_before_any_work(tmp_path: Path, override: str, expected: str) -> None:
    out = tmp_path / "data"
    proc = _run("recsys.generate", override, f"out={out}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_existing_output_is_kept_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "data"
    common = ["rows=500", f"out={out}", f"hydra.run.dir={tmp_path / 'run'}", *SMALL]
    assert _run("recsys.generate", *common).returncode == 0
    before = (out / "_generator.json").read_bytes()
    proc = _run("recsys.generate", *common, "seed=5")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: output {out} already exists; pass overwrite=true to replace it"
    ]
    assert (out / "_generator.json").read_bytes() == before


def test_pipeline_generates_then_reuses(tmp_path: Path) -> None:
    args = ["pipeline.rows=2000", f"paths.data_dir={tmp_path}", "pipeline.stages=[generate]"]
    first = _run("recsys.pipeline", *args, *SMALL, f"hydra.run.dir={tmp_path / 'r1'}")
    out = first.stdout + first.stderr
    assert first.returncode == 0, out
    assert "[1/1] generate done" in out and "2,000 rows, label rate" in out, out
    data = tmp_path / "demo" / "recsys2021"
    stamp = (data / "_generator.json").stat().st_mtime_ns
    second = _run("recsys.pipeline", *args, *SMALL, f"hydra.run.dir={tmp_path / 'r2'}")
    assert second.returncode == 0, second.stderr
    assert "[1/1] generate done (reused)" in second.stdout + second.stderr
    assert (data / "_generator.json").stat().st_mtime_ns == stamp
    # the report of a generate-only run holds the data summary
    assert "## Data" in (tmp_path / "r2" / "report.md").read_text()
