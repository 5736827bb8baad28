"""Ctrl-C, owned by the project rather than by the libraries a command happens to start.

PySpark installs its own SIGINT handler whenever a SparkContext starts (it cancels jobs
through the py4j call that Ctrl-C has just interrupted, which can deadlock), and Ray Train's
`fit()` installs one that aborts the run and exits with status 0 or 1, and never puts the
previous handler back: after a training, Ctrl-C in a later stage was ignored. So a command
(`recsys.cli.run_task`) holds `owned()` for its whole run: one handler that records the
interrupt and raises `KeyboardInterrupt` in the main thread, put back after anything that may
have replaced it (`install()`), blocking calls into libraries that would replace it made from
a helper thread (`call_in_thread`), and the previous handler restored when the command ends.

After an interrupt, `exit_interrupted` stops the engines still running (the callbacks given to
`on_interrupt`: the Spark JVM, the local Ray cluster), prints `interrupted` and ends the process
with status 130 at once: an orderly interpreter shutdown after Ctrl-C ran library exit hooks
that could be interrupted again and end the process by SIGINT (-2) instead.

`pause_point` is a fault-injection hook for the tests: when the environment names a point, the
process that reaches it announces it in a file and waits there, so a test interrupts a stage at
a known moment instead of after a guessed number of seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command ended by Ctrl-C
PAUSE_AT_ENV = "RECSYS_PAUSE_AT"
PAUSE_FILE_ENV = "RECSYS_PAUSE_FILE"

_received = threading.Event()
_stoppers: dict[str, Callable[[], None]] = {}


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    if _received.is_set():
        return  # a second Ctrl-C while the first one's clean-up runs: let it finish
    _received.set()
    raise KeyboardInterrupt


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install() -> None:
    """Make the project's handler the SIGINT handler again (main thread only; elsewhere
    Python refuses to set handlers, and none can have been replaced)."""
    if _main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


class QuietAfterInterrupt(logging.Filter):
    """Drops what libraries log about Ctrl-C (py4j logs the KeyboardInterrupt that broke its
    call with a traceback, then the errors of the killed JVM's connections): after Ctrl-C the
    console says `interrupted` and no more. The project's own records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        caused = record.exc_info is not None and isinstance(record.exc_info[1], KeyboardInterrupt)
        ours = record.name.startswith("recsys") or record.name == "__main__"
        return not (caused or (received() and not ours))


@contextlib.contextmanager
def owned() -> Iterator[None]:
    """The project's SIGINT handler for the block, and `QuietAfterInterrupt` on the root
    logger's handlers (where every library's records end); both undone after it."""
    if not _main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    quiet = QuietAfterInterrupt()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(quiet)
    _received.clear()
    install()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
        for handler in handlers:
            handler.removeFilter(quiet)
        # the interrupt belonged to this block: code after it (the next test in one pytest
        # process) must not take its errors for the interrupt's doing
        _received.clear()


def received() -> bool:
    """Whether Ctrl-C came during the current `owned()` block. An exception raised after it
    (a py4j call whose connection the interrupt broke) is then the interrupt's doing."""
    return _received.is_set()


def on_interrupt(name: str, stop: Callable[[], None]) -> None:
    """Call `stop` (once, by name) before the process exits after Ctrl-C."""
    _stoppers[name] = stop


def forget(name: str) -> None:
    """The engine `name` was stopped normally; nothing to do for it after Ctrl-C."""
    _stoppers.pop(name, None)


def stop_engines() -> None:
    """Run every `on_interrupt` callback; one that fails does not keep the others from
    running (the process is about to exit)."""
    while _stoppers:
        name, stop = _stoppers.popitem()
        try:
            stop()
        except Exception as e:
            log.debug("stopping %s after Ctrl-C failed: %s", name, e)


def exit_interrupted() -> None:
    """Stop the engines, say `interrupted`, exit 130 (without the interpreter's exit hooks:
    the callers have removed their partial outputs on the way up)."""
    stop_engines()
    print("interrupted", file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def descendants(pid: int | None = None) -> set[int]:
    """Every process below `pid` (this one by default), read from Linux's /proc; empty where
    there is no /proc."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid or os.getpid()}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found |= {child, *descendants(child)}
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


@contextlib.contextmanager
def reaping_children(root: int | None = None, timeout: float = 10.0) -> Iterator[None]:
    """After the block (which stops an engine), wait until the processes that were below
    `root` (this process by default; `root` itself too when given) before it have exited, and
    kill those still there after `timeout` seconds. Captured first: a worker whose parent
    (Ray's raylet, Spark's JVM) exits is moved elsewhere in the tree."""
    before = descendants(root) | ({root} if root else set())
    yield
    deadline = time.monotonic() + timeout
    while alive := [p for p in before if _alive(p)]:
        if time.monotonic() > deadline:
            for p in alive:
                with contextlib.suppress(OSError):
                    os.kill(p, signal.SIGKILL)
            return
        time.sleep(0.1)


def call_in_thread(fn: Callable[[], T], poll: float = 0.2) -> T:
    """`fn()` in a helper thread while the main thread waits, so a library that installs its
    own SIGINT handler when called from the main thread (Ray Train's `fit`) leaves ours in
    place. Ctrl-C raises `KeyboardInterrupt` here; the helper is a daemon thread, ended with
    the process (the caller stops the engine it was waiting on)."""
    if not _main_thread():
        return fn()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=run, name=getattr(fn, "__name__", "call"), daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(poll)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def pause_point(name: str) -> None:
    """Test hook: if `RECSYS_PAUSE_AT` is `name`, write this process's pid to
    `RECSYS_PAUSE_FILE` and wait until interrupted or killed, or until its parent exits (a
    Spark or Ray worker whose engine was stopped). No effect otherwise."""
    if os.environ.get(PAUSE_AT_ENV) != name:
        return
    target = os.environ.get(PAUSE_FILE_ENV)
    if target:
        path = Path(target)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(f"{os.getpid()} {name}\n")
        tmp.replace(path)
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.05)
    os._exit(1)
