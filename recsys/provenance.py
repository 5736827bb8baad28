"""What every run records about itself: resolved config, overrides, code version, packages."""

import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

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


def _named(e: OSError, path: Path) -> OSError | None:
    """`e` again with `path` as its file, or None if it names one: a failed write() or
    close() names none, and a disk-full message should say where."""
    if e.filename is not None or e.errno is None:
        return None
    return OSError(e.errno, e.strerror or str(e), str(path))


@contextmanager
def open_for_write(path: Path) -> Iterator[BinaryIO]:
    """`path` opened for binary writing (mode 0o666 less the umask, as `open` does); an
    OSError raised while it is open names `path`."""
    try:
        with open(path, "wb") as f:
            yield f
    except OSError as e:
        named = _named(e, path)
        if named is None:
            raise
        raise named from e


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` from Python, so a full disk is an OSError naming `path`
    (native writers such as TorchScript's abort the process or lose the errno)."""
    with open_for_write(path) as f:
        f.write(data)


def copy_tree(source: Path, target: Path) -> None:
    """Copy the files under `source` into `target` (created if needed) with the modes the
    umask gives new files, not the source's: `shutil.copytree` would carry a 0600 file into a
    bundle that another user must read."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*")):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(exist_ok=True)
        else:
            shutil.copyfile(path, dest)


def new_temp_file(directory: Path, prefix: str) -> tuple[int, Path]:
    """A new file in `directory`, opened exclusively; unlike `tempfile.mkstemp` (always 0600)
    its mode is 0o666 less the umask, so a reader running as another user can read it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        path = directory / f"{prefix}{uuid.uuid4().hex[:8]}.tmp"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {prefix}* in {directory}")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_temp_file(path.parent, f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        named = _named(e, path)
        if named is None:
            raise
        raise named from e
    except BaseException:
        tmp.unlink(missing_ok=True)
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
    made_parent = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_parent:
            # e.g. a run's checkpoints/: an empty directory would look like a started output
            with contextlib.suppress(OSError):
                target.parent.rmdir()
        raise
