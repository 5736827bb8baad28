"""A full disk, however an engine reports it, becomes one line naming the path written."""

import errno
import shutil
from pathlib import Path

import pytest

from recsys.errors import DiskFullError, RecsysError, disk_full_error

OUT = Path("/data/out")
FULL = "No space left on device"


def _raised(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    """`exc` as raised `from cause`, with its chain set as Python sets it."""
    try:
        raise exc from cause
    except BaseException as e:
        return e


def _line(exc: BaseException, target: Path | None = OUT) -> str | None:
    found = disk_full_error(exc, target)
    assert found is None or isinstance(found, DiskFullError | RecsysError)
    return None if found is None else str(found)


def test_an_oserror_beside_the_target_names_the_target() -> None:
    e = OSError(errno.ENOSPC, FULL, "/data/.out.tmp-1234abcd/part-0.parquet")
    assert _line(e) == f"no space left on device writing {OUT}"


def test_an_oserror_elsewhere_names_its_own_file() -> None:
    e = OSError(errno.ENOSPC, FULL, "/tmp/ckpt-x/model.pt")
    assert _line(e) == "no space left on device writing /tmp/ckpt-x/model.pt"
    # a copy names the destination second
    copy = OSError(errno.ENOSPC, FULL, "/data/in.parquet", None, "/scratch/in.parquet")
    assert _line(copy) == "no space left on device writing /scratch/in.parquet"


def test_a_quota_is_named_as_such_and_no_file_falls_back_to_the_target() -> None:
    assert _line(OSError(errno.EDQUOT, "Disk quota exceeded")) == (
        f"disk quota exceeded writing {OUT}"
    )
    assert _line(OSError(errno.ENOSPC, FULL), None) == (
        "no space left on device writing (the file is unknown)"
    )


def test_wrapped_errors_are_found_through_the_chain_and_in_text() -> None:
    # pyarrow's OSError, wrapped by a RecsysError of the stage
    pyarrow = OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] " + FULL)
    assert _line(_raised(RecsysError("file x cannot be read"), pyarrow)) == (
        f"no space left on device writing {OUT}"
    )
    # Spark: a Py4J error whose text holds Java's IOException
    java = RuntimeError(
        "An error occurred while calling o1095.parquet.\n: org.apache.spark.SparkException: "
        "Job aborted.\nCaused by: java.io.IOException: No space left on device\n\tat ..."
    )
    assert _line(java) == f"no space left on device writing {OUT}"
    # Ray: the worker's traceback, as text in the driver's error
    ray = RuntimeError("TrainingFailedError ... OSError: [Errno 28] No space left on device")
    assert _line(ray) == f"no space left on device writing {OUT}"


def test_shutil_copytree_errors_name_the_destination() -> None:
    dst = "/scratch/run/checkpoints/.last.tmp-1/optimizer.pt"
    e = shutil.Error([("/tmp/c/optimizer.pt", dst, f"[Errno 28] {FULL}: 'a' -> 'b'")])
    assert _line(e, Path("/other/run")) == f"no space left on device writing {dst}"


def test_a_failed_torch_writer_says_the_disk_may_be_full() -> None:
    e = RuntimeError(
        "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing"
    )
    line = _line(e)
    assert line is not None and line.startswith(f"cannot write {OUT} (is the disk full?)")


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad value"),
        OSError(errno.EACCES, "Permission denied", "/data/out"),
        RuntimeError("Errno 280 is not a thing"),
    ],
)
def test_other_errors_are_not_a_full_disk(exc: BaseException) -> None:
    assert disk_full_error(exc, OUT) is None
