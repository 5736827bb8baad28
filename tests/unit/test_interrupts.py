"""recsys.interrupts: the project's own Ctrl-C handling (the fault tests send real SIGINTs to
real pipelines; these check the parts in-process)."""

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from recsys import interrupts


def test_owned_installs_its_handler_and_restores_the_previous_one() -> None:
    def previous(signum: int, frame: object) -> None:
        pass

    saved = signal.signal(signal.SIGINT, previous)
    try:
        with interrupts.owned():
            assert signal.getsignal(signal.SIGINT) is interrupts._on_sigint
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a library replaces it
            interrupts.install()
            assert signal.getsignal(signal.SIGINT) is interrupts._on_sigint
        assert signal.getsignal(signal.SIGINT) is previous
    finally:
        signal.signal(signal.SIGINT, saved)


def test_sigint_raises_keyboard_interrupt_once_and_is_recorded() -> None:
    with interrupts.owned():
        assert not interrupts.received()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode boundary, before this ends
        assert interrupts.received()
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while cleaning up: no raise
    assert not interrupts.received()  # later code (the next test) is not "interrupted"


def test_call_in_thread_runs_off_the_main_thread_and_passes_results_and_errors() -> None:
    assert interrupts.call_in_thread(lambda: threading.current_thread().name) != "MainThread"

    def fails() -> None:
        raise ValueError("from the helper")

    with pytest.raises(ValueError, match="from the helper"):
        interrupts.call_in_thread(fails)


def test_engines_are_stopped_once_each_and_a_failing_one_does_not_stop_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a registry of its own: the session's real engines (the shared Spark) must not be stopped
    monkeypatch.setattr(interrupts, "_stoppers", {})
    calls: list[str] = []

    def broken() -> None:
        calls.append("broken")
        raise RuntimeError("cannot stop")

    interrupts.on_interrupt("a", lambda: calls.append("a"))
    interrupts.on_interrupt("b", broken)
    interrupts.on_interrupt("c", lambda: calls.append("c"))
    interrupts.forget("c")  # stopped normally
    interrupts.stop_engines()
    interrupts.stop_engines()
    assert sorted(calls) == ["a", "broken"]


def test_library_records_of_the_interrupt_are_dropped_ours_kept() -> None:
    quiet = interrupts.QuietAfterInterrupt()

    def record(name: str, exc: BaseException | None = None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc else None
        return logging.LogRecord(name, logging.ERROR, __file__, 1, "msg", None, info)

    with interrupts.owned():
        assert not quiet.filter(record("root", KeyboardInterrupt()))  # py4j's logging.exception
        assert quiet.filter(record("py4j.java_gateway", OSError()))
        interrupts._received.set()
        assert not quiet.filter(record("py4j.java_gateway", OSError()))
        assert quiet.filter(record("recsys.pipeline"))
    assert not interrupts.received()  # cleared with the block


def test_pause_point_does_nothing_unless_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(interrupts.PAUSE_AT_ENV, "export")
    monkeypatch.setenv(interrupts.PAUSE_FILE_ENV, str(tmp_path / "paused"))
    interrupts.pause_point("train")  # returns at once
    assert not (tmp_path / "paused").exists()


def test_descendants_finds_a_child_process() -> None:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in interrupts.descendants()
        with interrupts.reaping_children(child.pid, timeout=0.5):
            pass  # nothing stops it: it is killed when the timeout passes
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        child.kill()
