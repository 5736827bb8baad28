"""Glue shared by the Hydra entry points: run recording and one-line user errors."""

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf

from recsys import interrupts
from recsys.errors import RecsysError, disk_full_error
from recsys.provenance import record_run

log = logging.getLogger(__name__)
T = TypeVar("T")


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _output_of(cfg: DictConfig) -> str | None:
    """The path a task writes (`out`; the pipeline's work_dir; else the run directory), which a
    disk-full error names when the failed file is a temporary one beside it or unknown."""
    for key in ("out", "pipeline.work_dir", "paths.output_dir"):
        try:
            value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        except Exception:  # ${hydra:...} outside a Hydra app
            value = None
        if isinstance(value, str) and value:
            return value
    return None


def run_task(
    task: Callable[[DictConfig], T],
    cfg: DictConfig,
    check: Callable[[DictConfig], None] | None = None,
) -> T | None:
    """Run `check(cfg)`, record the run (config, overrides, git SHA, packages), run `task(cfg)`.

    A `RecsysError` (bad input the user can fix) becomes one line on stderr and exit code 2;
    anything else is a bug and keeps its traceback. Inside a sweep (`-m`) a failed job is
    logged, its message written to `error.txt` in the job's directory, and the sweep goes on.
    Ctrl-C (`recsys.interrupts`) prints `interrupted` and exits 130, in a sweep too.
    """
    with interrupts.owned():
        try:
            return _run_checked(task, cfg, check)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt) or interrupts.received():
                # every stage removed its temporary output on the way up; the engines
                # (Spark's JVM, the local Ray) are stopped there, then exit 130
                interrupts.exit_interrupted()
            raise


def _run_checked(
    task: Callable[[DictConfig], T],
    cfg: DictConfig,
    check: Callable[[DictConfig], None] | None,
) -> T | None:
    try:
        if check is not None:
            check(cfg)
        run_dir = record_run(cfg)
        log.debug("run directory: %s", run_dir)
        return task(cfg)
    except Exception as e:
        if interrupts.received():
            raise  # caused by Ctrl-C (a py4j call it broke): run_task reports the interrupt
        if _in_sweep():
            from hydra.core.hydra_config import HydraConfig

            log.exception("job failed; the sweep goes on")
            error_file = Path(HydraConfig.get().runtime.output_dir) / "error.txt"
            error_file.write_text(f"{type(e).__name__}: {e}\n")
            return None
        # a full disk is the user's to fix, whichever engine (pyarrow, Spark, Ray) reported it
        error = disk_full_error(e, _output_of(cfg)) or e
        if isinstance(error, RecsysError):
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        raise
