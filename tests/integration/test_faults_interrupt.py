"""Ctrl-C at each of the pipeline's six stages: `interrupted`, exit 130, nothing left behind.

Each run is paused at a known point inside a stage (`recsys.interrupts.pause_point`: the
process that reaches it writes a file and waits), then its whole process group gets SIGINT, as
a terminal's Ctrl-C does. The contract at every point: the console says `interrupted` and
shows no traceback, the exit status is 130, no temporary output (`.tmp-`) and no Spark scratch
directory is left, every process below the pipeline has exited, and the stages that had
finished keep their outputs.

Points: generate (after its first partition), features (a Spark job waits on its Python
worker, so the driver is inside a py4j call), train (on Ray with 2 workers, after the first
step), export (after the models are written), evaluate (after the first batch of users),
serve (the server is up). The later stages start from a copy of one whole tiny run
(`first_run`), so only the stage under test is redone.
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import TextIO

import pytest

from recsys.interrupts import PAUSE_AT_ENV, PAUSE_FILE_ENV, descendants
from tests.helpers.pipeline_run import REPO, leftovers, pipeline_command

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def interrupt_at(point: str, work: Path, tmp_path: Path, *extra: str) -> tuple[int, str, set[int]]:
    """Run the pipeline until `point`, Ctrl-C its process group; (status, output, the
    processes that were below it when interrupted)."""
    pause_file = tmp_path / "paused"
    scratch = tmp_path / "tmpdir"  # the run's TMPDIR: Spark's scratch goes there
    scratch.mkdir()
    env = {
        **os.environ,
        PAUSE_AT_ENV: point,
        PAUSE_FILE_ENV: str(pause_file),
        "TMPDIR": str(scratch),
        "RAY_TMPDIR": "/tmp/ray",  # Ray's session files (kept by Ray by design) and sockets
    }
    log = (tmp_path / "console.txt").open("w+")
    proc = subprocess.Popen(
        pipeline_command(work, tmp_path / "run", *extra),
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        deadline = time.monotonic() + 300
        while not pause_file.exists():
            assert proc.poll() is None, f"ended before {point}: " + _read(log)
            assert time.monotonic() < deadline, f"never reached {point}: " + _read(log)
            time.sleep(0.1)
        children = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        status = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # processes may take a moment to be reaped after the pipeline has exited
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in children):
        time.sleep(0.2)
    output = _read(log)
    assert [p for p in children if _alive(p)] == [], output
    # Spark's blockmgr-* / spark-* included; torch's compile cache is kept by every run
    assert [p for p in scratch.iterdir() if not p.name.startswith("torchinductor_")] == [], output
    return status, output, children


def _read(log: TextIO) -> str:
    log.flush()
    log.seek(0)
    return log.read()


def check_contract(status: int, output: str, work: Path) -> None:
    assert status == 130, output
    assert "interrupted" in output.splitlines(), output
    assert "Traceback" not in output, output
    assert leftovers(work) == [], output


def copy_of(first_run: tuple[Path, Path, str], tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(first_run[0], work)
    return work


def test_ctrl_c_in_generate(tmp_path: Path) -> None:
    work = tmp_path / "work"
    status, output, _ = interrupt_at("generate", work, tmp_path)
    check_contract(status, output, work)
    assert not (work / "recsys2021").exists()


def test_ctrl_c_in_a_spark_job(tmp_path: Path) -> None:
    work = tmp_path / "work"
    status, output, children = interrupt_at(
        "features", work, tmp_path, "pipeline.stages=[generate,features]"
    )
    check_contract(status, output, work)
    assert children, "the JVM was running"
    assert (work / "recsys2021" / "_generator.json").is_file()  # the finished stage stays
    assert not (work / "recsys2021_wnd").exists()


def test_ctrl_c_in_ray_training(first_run: tuple[Path, Path, str], tmp_path: Path) -> None:
    work = copy_of(first_run, tmp_path)
    ranker = (work / "runs" / "ranker" / "result.json").read_bytes()
    status, output, children = interrupt_at(
        "train", work, tmp_path, "pipeline.stages=[train]", "backend=ray"
    )
    check_contract(status, output, work)
    assert len(children) > 2, "Ray's processes were running"
    # the earlier (local-backend) runs are left as they were
    assert (work / "runs" / "ranker" / "result.json").read_bytes() == ranker


@pytest.mark.parametrize("stage", ["export", "evaluate", "serve"])
def test_ctrl_c_after_training(
    stage: str, first_run: tuple[Path, Path, str], tmp_path: Path
) -> None:
    work = copy_of(first_run, tmp_path)
    manifest = (work / "bundle" / "manifest.json").read_bytes()
    status, output, _ = interrupt_at(
        stage, work, tmp_path, f"pipeline.stages=[{stage}]", "resume=false"
    )
    check_contract(status, output, work)
    assert f"{stage} ..." in output
    # an interrupted export leaves the bundle it would have replaced
    assert (work / "bundle" / "manifest.json").read_bytes() == manifest
