"""What every run records about itself: resolved config, overrides, code version, packages."""

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

REPO_DIR = Path(__file__).resolve().parents[1]

KEY_PACKAGES: tuple[str, ...] = (
    "recsys",
    "torch",
    "numpy",
    "pyarrow",
    "pandas",
    "pyspark",
    "ray",
    "hydra-core",
    "omegaconf",
    "torchmetrics",
    "faiss-cpu",
    "grpcio",
    "protobuf",
)


def git_sha(repo_dir: Path = REPO_DIR) -> str:
    """The checked-out commit (with `-dirty` if tracked files changed), or "unknown"."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo_dir,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo_dir,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha or "unknown"


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that decide a run's numbers ("absent" if missing)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def run_info(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Everything needed to reproduce a run, as plain JSON-able data."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "overrides": list(overrides),
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
    }


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def record_run(cfg: DictConfig, output_dir: str | Path | None = None) -> Path:
    """Write `run_info.json` into the run directory and return that directory.

    Inside a Hydra app the directory and overrides come from HydraConfig; elsewhere (tests,
    Ray workers) pass `output_dir` and the overrides are recorded as empty.
    """
    from hydra.core.hydra_config import HydraConfig

    overrides: list[str] = []
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        overrides = list(hc.overrides.task)
        output_dir = output_dir or hc.runtime.output_dir
    if output_dir is None:
        raise ValueError("record_run needs output_dir outside a Hydra app")
    out = Path(output_dir)
    write_json_atomic(out / "run_info.json", run_info(cfg, overrides))
    return out


def run_log_file() -> Path | None:
    """The run's log file inside a Hydra app (`<run dir>/<task>.log`, conf/hydra), else None."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return Path(hc.runtime.output_dir) / f"{hc.job.name}.log"


def swap_in(tmp: Path, out: Path) -> None:
    """Replace `out` by `tmp` with renames only, so `out` is always whole or absent."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def temp_dir_for(target: Path) -> Iterator[Path]:
    """A fresh temporary directory beside `target`, swapped in when the block succeeds and
    removed when it fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
