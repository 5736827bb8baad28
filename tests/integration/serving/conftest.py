"""One small bundle for every serving test module (built once per session, ~5 s), a free-port
helper, and a real redis-server on a free port for the Redis feature store."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.serving_bundle import build_bundle
from tests.helpers.train_config import SMALL_MODELS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def serving_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of 240 users and ~400 items: flat index, small random W&D and two-tower."""
    out = tmp_path_factory.mktemp("serving") / "bundle_a"
    return build_bundle(
        out,
        ranker_overrides=tuple(SMALL_MODELS["wide_deep"]),
        tower_overrides=tuple(SMALL_MODELS["two_tower"]),
    )


@pytest.fixture(scope="session")
def second_bundle(serving_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another bundle of the same data with other random weights (a new model version)."""
    out = tmp_path_factory.mktemp("serving") / "bundle_b"
    return build_bundle(
        out,
        ranker_overrides=tuple(SMALL_MODELS["wide_deep"]),
        tower_overrides=tuple(SMALL_MODELS["two_tower"]),
        seed=5,
    )


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of our own on a free loopback port, no persistence; stopped at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed: `make test-deps` installs the Debian package "
            "redis-server (make test runs it first), or: sudo apt-get install redis-server"
        )
    port = free_port()
    work = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start on port {port}")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
