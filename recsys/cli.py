"""Glue shared by the Hydra entry points: run recording and one-line user errors."""

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf import DictConfig

from recsys.errors import RecsysError
from recsys.provenance import record_run

log = logging.getLogger(__name__)
T = TypeVar("T")


def run_task(
    task: Callable[[DictConfig], T],
    cfg: DictConfig,
    check: Callable[[DictConfig], None] | None = None,
) -> T:
    """Run `check(cfg)`, record the run (config, overrides, git SHA, packages), run `task(cfg)`.

    A `RecsysError` (bad input the user can fix) becomes one line on stderr and exit code 2;
    anything else is a bug and keeps its traceback.
    """
    try:
        if check is not None:
            check(cfg)
        run_dir = record_run(cfg)
        log.debug("run directory: %s", run_dir)
        return task(cfg)
    except RecsysError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
