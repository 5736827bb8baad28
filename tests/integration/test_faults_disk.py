"""Full disks, file permissions and errors that must be one line (issue 14).

Each full-disk test runs a real entry point (`python -m recsys.<stage>`) with its output on a
small tmpfs. The tmpfs is mounted in a private mount namespace around the command
(`unshare --mount`, plus `--user --map-root-user` when not root): no other process sees it,
and it cannot outlive the command, whatever happens to the test. What is left on it when the
command ends is listed from inside the namespace. Run directories and inputs stay outside.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from recsys.export import ExportSettings, export_bundle, layout
from tests.helpers.umask import umask

pytestmark = [
    pytest.mark.faults,
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # torch.jit's notice
]
REPO = Path(__file__).resolve().parents[2]
SMALL = ["dataset.num_users=300", "dataset.num_tweets=800", "dataset.num_hashtags=50"]
NAMESPACE = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--user", "--map-root-user"])
# $1 size, $2 mount point, $3 listing file, then the command; exit 90: no tmpfs
SCRIPT = """\
mount -t tmpfs -o "size=$1,mode=0755" tmpfs "$2" || exit 90
disk=$2; left=$3; shift 3
"$@"; rc=$?
(cd "$disk" && find . -mindepth 1 | sort) > "$left"
exit $rc
"""


@dataclass
class DiskRun:
    returncode: int
    stdout: str
    stderr: str
    left: list[str]  # what the command left on the small disk, as ./relative paths


def run_on_small_disk(disk: Path, size: str, module: str, *args: str) -> DiskRun:
    """`python -m <module> <args>` with a `size` tmpfs mounted at `disk` (new, empty)."""
    disk.mkdir()
    listing = disk.parent / f"{disk.name}.left"
    command = [*NAMESPACE, "sh", "-c", SCRIPT, "sh", size, str(disk), str(listing)]
    proc = subprocess.run(
        [*command, sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode == 90 or not listing.exists():
        pytest.fail(f"no {size} tmpfs at {disk} (needs mount namespaces): {proc.stderr[-2000:]}")
    return DiskRun(proc.returncode, proc.stdout, proc.stderr, listing.read_text().split())


def assert_disk_full(run: DiskRun, path: Path) -> None:
    """Exit 2 and stderr is exactly one line naming `path` and the cause."""
    output = run.stdout[-3000:] + run.stderr[-3000:]
    assert run.returncode == 2, output
    assert run.stderr.strip().splitlines() == [f"error: no space left on device writing {path}"], (
        output
    )


def test_generate_on_a_full_disk_removes_its_partial_output(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    out = disk / "data"
    run = run_on_small_disk(
        disk,
        "128k",  # 3,000 rows take about 340 kB
        "recsys.generate",
        "rows=3000",
        "partitions=2",
        "workers=2",  # the failure comes back from a worker process
        f"out={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *SMALL,
    )
    assert_disk_full(run, out)
    assert run.left == []


def test_preprocess_on_a_full_disk_removes_its_partial_output(
    recsys_raw: Path, tmp_path: Path
) -> None:
    disk = tmp_path / "disk"
    out = disk / "wnd"
    run = run_on_small_disk(
        disk,
        "128k",  # the processed 4,000 rows take about 250 kB
        "recsys.preprocess",
        "features=recsys2021_wnd",
        f"data={recsys_raw}",
        f"out={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert_disk_full(run, out)
    assert run.left == []


def test_train_on_a_full_disk_leaves_no_partial_checkpoint(
    export_runs: dict[str, Path], tmp_path: Path
) -> None:
    disk = tmp_path / "disk"
    run_dir = disk / "run"  # train writes its checkpoints into the run directory
    run = run_on_small_disk(
        disk,
        "128k",  # room for Hydra's files and the run's logs, not for a checkpoint (~150 kB)
        "recsys.train",
        "model=wide_deep",
        "model.hidden_units=[32,16]",
        f"data={export_runs['data']}",
        "backend=local",
        "trainer.epochs=1",
        "trainer.batch_size=256",
        f"hydra.run.dir={run_dir}",
    )
    assert_disk_full(run, run_dir)
    assert "./run/run_info.json" in run.left  # the run was recorded, then ran out of space
    partial = [p for p in run.left if ".tmp-" in p or p.startswith("./run/checkpoints")]
    assert partial == []
    assert "./run/result.json" not in run.left


@pytest.mark.parametrize(
    "size",
    [
        "32k",  # fails in ranker.pt, TorchScript's file (it aborted the process: exit 134)
        "160k",  # fails later, in items.faiss (Faiss's writer) with this data
    ],
)
def test_export_on_a_full_disk_removes_its_partial_bundle(
    export_runs: dict[str, Path], tmp_path: Path, size: str
) -> None:
    disk = tmp_path / "disk"
    out = disk / "bundle"
    run = run_on_small_disk(
        disk,
        size,
        "recsys.export",
        f"ranker_run={export_runs['wide_deep']}",
        f"retrieval_run={export_runs['two_tower']}",
        f"out={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert_disk_full(run, out)
    assert run.left == []


# ------------------------------------------------------------------ permissions


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"),
    [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)],
    ids=["022", "027"],
)
def test_every_file_of_a_bundle_has_the_umask_s_permissions(
    export_runs: dict[str, Path], tmp_path: Path, mask: int, file_mode: int, dir_mode: int
) -> None:
    out = tmp_path / "bundle"
    settings = ExportSettings(
        ranker_run=str(export_runs["wide_deep"]),
        retrieval_run=str(export_runs["two_tower"]),
        out=str(out),
    )
    with umask(mask):
        export_bundle(settings)
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert {layout.MANIFEST, "ranker/feature_spec.json", "ranker.pt", layout.INDEX} <= set(modes)
    wrong = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode != (dir_mode if (out / name).is_dir() else file_mode)
    }
    assert wrong == {}
    assert stat.S_IMODE(out.stat().st_mode) == dir_mode


# ------------------------------------------------------------ one-line errors


def _cli(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single `error:` line of a failed command (exit 2, nothing else on stderr)."""
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def test_export_of_a_checkpoint_with_an_unparsable_config_is_one_line(
    export_runs: dict[str, Path], tmp_path: Path
) -> None:
    ranker = tmp_path / "ranker"
    shutil.copytree(export_runs["wide_deep"], ranker)
    config = ranker / "checkpoints" / "best" / "config.json"
    config.write_text('{"model": ')
    out = tmp_path / "bundle"
    proc = _cli(
        "recsys.export",
        f"ranker_run={ranker}",
        f"retrieval_run={export_runs['two_tower']}",
        f"out={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    line = _one_line(proc)
    assert str(config) in line and "not readable JSON" in line, line
    assert not out.exists() and not list(tmp_path.glob(".bundle.tmp-*"))


@pytest.mark.parametrize("missing", ["ranker_run", "retrieval_run"])
def test_export_without_a_run_is_one_line(
    export_runs: dict[str, Path], tmp_path: Path, missing: str
) -> None:
    runs = {"ranker_run": export_runs["wide_deep"], "retrieval_run": export_runs["two_tower"]}
    given = [f"{key}={path}" for key, path in runs.items() if key != missing]
    common = [f"out={tmp_path / 'bundle'}", f"hydra.run.dir={tmp_path / 'run'}"]
    unset = _one_line(_cli("recsys.export", *given, *common))
    assert unset == f"error: {missing} is not set: pass {missing}=<training run directory>"
    gone = tmp_path / "no-such-run"
    absent = _one_line(_cli("recsys.export", *given, f"{missing}={gone}", *common))
    assert absent == f"error: {missing}={gone} is not a directory (pass a training run directory)"


def test_a_manifest_without_models_is_one_line_in_evaluate(
    export_runs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    export_bundle(
        ExportSettings(
            ranker_run=str(export_runs["wide_deep"]),
            retrieval_run=str(export_runs["two_tower"]),
            out=str(out),
        )
    )
    manifest_file = out / layout.MANIFEST
    manifest = json.loads(manifest_file.read_text())
    del manifest["models"]
    manifest_file.write_text(json.dumps(manifest))
    proc = _cli("recsys.evaluate", f"bundle={out}", f"hydra.run.dir={tmp_path / 'run'}")
    assert _one_line(proc) == f"error: {manifest_file} lacks 'models'; re-export the bundle"
