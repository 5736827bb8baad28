"""The Spark session settings and the Java check, without starting Spark."""

import os
import sys
from pathlib import Path

import pytest

from recsys.features.spark import (
    SparkSetupError,
    check_java,
    child_output_to,
    class_cache_key,
    class_cache_options,
    java_executable,
    local_cores,
    shuffle_partitions_for,
    spark_settings,
)


def test_settings_follow_the_config() -> None:
    s = spark_settings({"master": "local[*]", "cores": 2, "driver_memory": "3g", "conf": {"a": 1}})
    assert s["spark.master"] == "local[2]"
    assert s["spark.driver.memory"] == "3g"
    assert s["spark.sql.adaptive.enabled"] == "true"
    assert s["spark.ui.showConsoleProgress"] == "false"
    assert s["spark.ui.enabled"] == "false"
    assert s["spark.pyspark.python"] == sys.executable
    assert s["spark.python.daemon.module"] == "recsys.features.python_daemon"
    assert s["spark.driver.host"] == "127.0.0.1"
    assert "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED" in s["spark.driver.extraJavaOptions"]
    assert "log4j2.configurationFile=" in s["spark.driver.extraJavaOptions"]
    assert Path(s["spark.driver.extraJavaOptions"].split("file:")[-1]).is_file()
    assert s["a"] == "1"
    cluster = spark_settings({"master": "spark://host:7077", "cores": 2})
    assert cluster["spark.master"] == "spark://host:7077"
    assert "spark.driver.host" not in cluster


def test_shuffle_partitions_are_sized_to_the_input() -> None:
    mib = 1024 * 1024
    assert shuffle_partitions_for(10 * mib, cores=2) == 2
    assert shuffle_partitions_for(640 * mib, cores=2) == 10
    assert shuffle_partitions_for(10**15, cores=2) == 400
    assert local_cores("local[3]") == 3
    assert local_cores("local") == 1
    assert local_cores("local[*]") == (os.cpu_count() or 1)


def test_missing_java_fails_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SparkSetupError, match="Java not found: Spark needs Java 17"):
        java_executable()
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(SparkSetupError, match="has no bin/java"):
        java_executable()


def test_an_old_java_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    java = tmp_path / "bin" / "java"
    java.parent.mkdir()
    java.write_text("#!/bin/sh\necho 'openjdk version \"1.8.0_392\"' >&2\n")
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(SparkSetupError, match="is Java 8; Spark needs Java 17"):
        check_java()


def test_the_class_cache_is_written_once_then_used(tmp_path: Path) -> None:
    key = class_cache_key('openjdk version "17.0.15"', "-XX:TieredStopAtLevel=1")
    assert key != class_cache_key('openjdk version "21.0.1"', "-XX:TieredStopAtLevel=1")
    assert key != class_cache_key('openjdk version "17.0.15"', "")
    # no archive yet: nothing to use, and none is written unless asked
    assert class_cache_options(tmp_path / "cds", key) == ([], None)
    assert not (tmp_path / "cds").exists()
    options, partial = class_cache_options(tmp_path / "cds", key, write=True)
    assert options[0] == f"-XX:ArchiveClassesAtExit={partial}"
    assert partial.parent == tmp_path / "cds" and partial.name.endswith(".partial")
    # a half-written archive is never used: only the renamed, whole one
    partial.write_bytes(b"half")
    options, _ = class_cache_options(tmp_path / "cds", key, write=True)
    assert options[0].startswith("-XX:ArchiveClassesAtExit=")
    (tmp_path / "cds" / f"{key}.jsa").write_bytes(b"whole")
    options, partial = class_cache_options(tmp_path / "cds", key)
    assert options[0] == f"-XX:SharedArchiveFile={tmp_path / 'cds' / (key + '.jsa')}"
    assert partial is None


def test_a_child_started_in_the_block_writes_to_the_log_file(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """How the pipeline keeps the JVM's start-up warnings off the terminal."""
    import subprocess

    log_file = tmp_path / "run" / "pipeline.log"
    log_file.parent.mkdir()
    log_file.write_text("earlier lines\n")
    with child_output_to(log_file):
        code = "import sys; print('to stdout'); print('to stderr', file=sys.stderr)"
        child = subprocess.Popen([sys.executable, "-c", code])
    child.wait()
    print("after the block")
    assert log_file.read_text().splitlines() == ["earlier lines", "to stdout", "to stderr"]
    out, err = capfd.readouterr()
    assert "to stdout" not in out and "to stderr" not in err
    assert "after the block" in out
