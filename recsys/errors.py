"""Errors a user can fix: entry points print their message on one line and exit with 2."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path


class RecsysError(Exception):
    """Bad input or configuration; the message names the setting, column or file at fault."""


class DiskFullError(RecsysError):
    """A write found its file system full (ENOSPC) or its quota used up (EDQUOT)."""


_REASONS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
# How the two errnos read once an engine has turned them into text: Python's and pyarrow's
# OSError, Java's IOException inside a Py4J error, a Ray worker's traceback inside Ray's error.
_TEXT = {
    errno.ENOSPC: re.compile(r"no space left on device|\[?errno 28\]?(?!\d)", re.IGNORECASE),
    errno.EDQUOT: re.compile(r"disk quota exceeded|\[?errno 122\]?(?!\d)", re.IGNORECASE),
}
# TorchScript's and torch.save's zip writer report a failed write without the errno
_TORCH_WRITER = re.compile(r"PytorchStreamWriter failed writing|file write failed")


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc`, then its causes and contexts, each once (the chain can loop)."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if any(e is s for s in seen):
            continue
        seen.append(e)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return seen


def _text_errno(text: str) -> int | None:
    return next((code for code, pattern in _TEXT.items() if pattern.search(text)), None)


def _disk_full_in(e: BaseException) -> tuple[int, str | None] | None:
    """(errno, path written or None) when `e` itself reports a full disk."""
    if isinstance(e, shutil.Error) and e.args and isinstance(e.args[0], list):
        # copytree gathers (source, destination, message) per failed file
        for item in e.args[0]:
            if isinstance(item, tuple) and len(item) == 3:
                code = _text_errno(str(item[2]))
                if code is not None:
                    return code, str(item[1])
    if isinstance(e, OSError) and e.errno in _REASONS:
        # a copy or rename names the destination second
        path = e.filename2 if e.filename2 is not None else e.filename
        return e.errno, None if path is None else os.fsdecode(path)
    code = _text_errno(str(e))
    return None if code is None else (code, None)


def disk_full_error(exc: BaseException, target: str | Path | None = None) -> RecsysError | None:
    """A one-line error for `exc` if it (or what caused it) is a full disk, else None.

    The line names `target` (the output the task writes) when the failed file was under the
    target's directory or is unknown (temporary files beside the target are gone by now);
    a file elsewhere (e.g. in /tmp) is named itself.
    """
    found = [hit for hit in map(_disk_full_in, _chain(exc)) if hit is not None]
    if found:
        code, path = next((hit for hit in found if hit[1] is not None), found[0])
        return DiskFullError(f"{_REASONS[code]} writing {_where(path, target)}")
    writer = next((e for e in _chain(exc) if _TORCH_WRITER.search(str(e))), None)
    if writer is not None:
        first = str(writer).strip().splitlines()[0][:200]
        return DiskFullError(
            f"cannot write {_where(None, target)} (is the disk full?): torch: {first}"
        )
    return None


def _where(path: str | None, target: str | Path | None) -> str:
    if target is None:
        return path or "(the file is unknown)"
    if path is None:
        return str(target)
    parent = Path(os.path.abspath(target)).parent
    return str(target) if Path(os.path.abspath(path)).is_relative_to(parent) else path
