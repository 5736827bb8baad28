"""The one place a SparkSession is built, from the `spark` config node of `preprocess`.

Local mode by default (`master: local[*]`); any master URL (standalone, YARN, Kubernetes) works
by config. The session is tuned for feature jobs: adaptive query execution on (it coalesces
small shuffle partitions and picks join strategies at run time), shuffle partitions sized to
the input (`shuffle_partitions_for`), Arrow for every Python <-> JVM transfer, quiet logs
(warnings only, no progress bars, no web UI), Python workers on this interpreter, and the
`--add-opens` options Spark needs on Java 17. Without Java the builder fails with a message
saying what to install, instead of a py4j stack trace.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys import interrupts
from recsys.errors import RecsysError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

MIN_JAVA = 17
LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
BYTES_PER_PARTITION = 64 * 1024 * 1024
MAX_SHUFFLE_PARTITIONS = 400

# What Spark's launcher adds for Java 17 (JavaModuleOptions), stated here so a session started
# from any launcher (spark-submit, a notebook, an IDE) gets them too.
JAVA17_OPTIONS: tuple[str, ...] = (
    "-XX:+IgnoreUnrecognizedVMOptions",
    *(
        f"--add-opens=java.base/{package}=ALL-UNNAMED"
        for package in (
            "java.lang",
            "java.lang.invoke",
            "java.lang.reflect",
            "java.io",
            "java.net",
            "java.nio",
            "java.util",
            "java.util.concurrent",
            "java.util.concurrent.atomic",
            "jdk.internal.ref",
            "sun.nio.ch",
            "sun.nio.cs",
            "sun.security.action",
            "sun.util.calendar",
        )
    ),
    "-Djdk.reflect.useDirectMethodHandle=false",
    "-Dio.netty.tryReflectionSetAccessible=true",
)


class SparkSetupError(RecsysError):
    """Spark cannot start here (no Java, an old Java, a bad setting)."""


def java_executable() -> str:
    """The `java` Spark will run: $JAVA_HOME/bin/java, else the first on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        raise SparkSetupError(
            f"JAVA_HOME={java_home} has no bin/java; point JAVA_HOME at a Java {MIN_JAVA}+ "
            "installation or unset it"
        )
    found = shutil.which("java")
    if found is None:
        raise SparkSetupError(
            f"Java not found: Spark needs Java {MIN_JAVA} or newer. Install it (for example "
            f"`apt-get install openjdk-{MIN_JAVA}-jre-headless`) or set JAVA_HOME."
        )
    return found


def java_version_text(java: str) -> str:
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise SparkSetupError(f"cannot run {java} -version: {e}") from e
    return proc.stderr + proc.stdout


def java_major_version(version_text: str) -> int:
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_text)
    if not match:
        raise SparkSetupError(f"cannot tell the Java version from: {version_text[:200]}")
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def check_java() -> str:
    """`java -version` of the Java Spark will use, after checking it is Java 17+."""
    java = java_executable()
    text = java_version_text(java)
    major = java_major_version(text)
    if major < MIN_JAVA:
        raise SparkSetupError(f"{java} is Java {major}; Spark needs Java {MIN_JAVA} or newer")
    return text


# ------------------------------------------------------------------ class cache
# The driver JVM spends about half of its start-up CPU loading Spark's classes (measured here:
# 13 of 26 CPU seconds for start-up plus a first small job). A class data sharing archive
# (Java's AppCDS) maps them ready-made instead. `class_cache` uses an archive when there is
# one; only a run with `class_cache_write` writes one (recording the classes slows that run's
# JVM and the dump at exit takes about 30 s here: measured 55-60 s more for a first `make demo`
# than with no archive at all, so runs never pay it unasked). The archive is written when the
# JVM exits (`stop_spark` waits for that, then renames it into place: a truncated archive
# would crash the JVM that maps it, so only whole ones are ever used); later runs with the
# same Java, Spark jars (and their location) and JVM options use it.

_pending_archive: tuple[Path, Path] | None = None  # (being written, final) for stop_spark
_scratch: Path | None = None  # the running session's spark.local.dir, when it is ours


def default_class_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "recsys" / "spark-cds"


def class_cache_key(java_version: str, jvm_options: str) -> str:
    import hashlib

    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    names = sorted(p.name for p in jars.glob("*.jar")) if jars.is_dir() else []
    # an archive records the class path it was made with: another install (a fresh clone's
    # venv) cannot use it, so the jars' location is part of the key
    text = "\n".join([java_version, pyspark.__version__, jvm_options, str(jars.resolve()), *names])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def class_cache_options(
    cache_dir: Path, key: str, write: bool = False
) -> tuple[list[str], Path | None]:
    """JVM options to use the archive (or to write it, with `write`); the path being
    written, if any."""
    final = cache_dir / f"{key}.jsa"
    # a stale or mismatched archive is skipped without a warning
    quiet = ["-Xlog:cds=off", "-Xlog:cds+dynamic=off"]
    if final.is_file():
        return [f"-XX:SharedArchiveFile={final}", *quiet], None
    if not write:
        return [], None
    cache_dir.mkdir(parents=True, exist_ok=True)
    for old in cache_dir.glob("*.partial"):  # left by a run that never called stop_spark
        if time.time() - old.stat().st_mtime > 3600:
            old.unlink(missing_ok=True)
    partial = cache_dir / f"{key}.{os.getpid()}.partial"
    return [f"-XX:ArchiveClassesAtExit={partial}", *quiet], partial


def shuffle_partitions_for(input_bytes: int, cores: int) -> int:
    """One shuffle partition per 64 MiB of input, at least one per core, at most 400."""
    wanted = math.ceil(max(input_bytes, 1) / BYTES_PER_PARTITION)
    return max(cores, min(wanted, MAX_SHUFFLE_PARTITIONS))


def local_cores(master: str) -> int:
    """Cores of a `local[N]` / `local[*]` master (the machine's count for *), else 2."""
    match = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\d+)?\])?", master)
    if not match:
        return 2
    n = match.group(1)
    if n is None:
        return 1
    return (os.cpu_count() or 1) if n == "*" else int(n)


def spark_settings(cfg: Mapping[str, Any], class_cache: list[str] = ()) -> dict[str, str]:
    """Every `spark.*` setting the session gets from the config (pure; tested without Java)."""
    master = cfg.get("master") or "local[*]"
    if cfg.get("cores") and master.startswith("local"):
        master = f"local[{int(cfg['cores'])}]"
    cores = local_cores(master)
    java_options = [
        *JAVA17_OPTIONS,
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG.as_uri()}",
        *str(cfg.get("jvm_options") or "").split(),
        *class_cache,
    ]
    settings = {
        "spark.master": master,
        "spark.app.name": cfg.get("app_name") or "recsys",
        "spark.driver.memory": str(cfg.get("driver_memory") or "4g"),
        "spark.driver.extraJavaOptions": " ".join(java_options),
        "spark.executor.extraJavaOptions": " ".join(JAVA17_OPTIONS),
        "spark.sql.shuffle.partitions": str(cfg.get("shuffle_partitions") or 2 * cores),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        # write a few output partitions (train / valid / test) side by side instead of sorting
        "spark.sql.maxConcurrentOutputFileWriters": "4",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        # Constraint inference on plans with hundreds of CASE WHEN branches (the small
        # vocabularies) costs the planner minutes and gigabytes; nothing here needs it
        "spark.sql.constraintPropagation.enabled": "false",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        # Python workers import the installed pyspark (compiled) rather than Spark's zip copy
        "spark.python.daemon.module": "recsys.features.python_daemon",
    }
    if master.startswith("local"):
        # one machine: bind to loopback, no network interface lookups
        settings["spark.driver.host"] = "127.0.0.1"
        settings["spark.driver.bindAddress"] = "127.0.0.1"
    for key, value in (cfg.get("conf") or {}).items():
        settings[str(key)] = str(value)
    return settings


def build_spark(cfg: Mapping[str, Any], jvm_log: Path | None = None) -> SparkSession:
    """A SparkSession from the `spark` config node (master, driver_memory, ... conf).

    With `jvm_log` (a run's log file), the JVM's console output (start-up warnings, its
    log, launcher errors) goes there instead of the terminal, and a JVM that cannot start
    names that file in the error.

    With `class_cache_write: true`, stop it with `stop_spark` so that the class archive the
    run writes is put in place.
    """
    global _pending_archive
    java_version = check_java()
    from pyspark.sql import SparkSession

    cache_options: list[str] = []
    if cfg.get("class_cache"):
        cache_dir = Path(cfg.get("class_cache_dir") or default_class_cache_dir())
        key = class_cache_key(java_version, str(cfg.get("jvm_options") or ""))
        write = bool(cfg.get("class_cache_write"))
        cache_options, partial = class_cache_options(cache_dir, key, write)
        if partial is not None:
            _pending_archive = (partial, cache_dir / f"{key}.jsa")
    settings = spark_settings(cfg, cache_options)
    global _scratch
    _remove_scratch()  # a session stopped by Spark's own `stop()` left its directory
    _scratch = _scratch_dir(settings)
    if _scratch is not None:
        settings["spark.local.dir"] = str(_scratch)
    # Python workers must run this interpreter (its packages), whatever `python3` is on PATH
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if settings["spark.master"].startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    # Ctrl-C from here on ends the JVM (and removes its scratch directory) before exiting
    interrupts.on_interrupt("spark", kill_spark)
    try:
        with child_output_to(jvm_log) if jvm_log else contextlib.nullcontext():
            spark = builder.getOrCreate()
    except Exception as e:  # py4j / JVM start-up failures
        kill_spark()
        where = f" (the JVM's output is in {jvm_log})" if jvm_log else ""
        raise SparkSetupError(f"Spark failed to start: {e}{where}") from e
    plain_sigint()
    spark.sparkContext.setLogLevel(str(cfg.get("log_level") or "WARN").upper())
    log.debug("spark %s on %s", spark.version, settings["spark.master"])
    return spark


@contextlib.contextmanager
def child_output_to(path: Path) -> Iterator[None]:
    """Processes started inside the block (the JVM) write stdout and stderr to `path`.

    The JVM's start-up warnings and console log then go to a run's log file instead of the
    user's terminal. This process's own output is redirected for the duration of the block
    too, so keep the block to the start of the child.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (target, *saved):
            os.close(fd)


def plain_sigint() -> None:
    """Ctrl-C as the project's plain KeyboardInterrupt again (`recsys.interrupts`). PySpark's
    own handler (set whenever a SparkContext starts) cancels jobs through py4j from inside the
    interrupted py4j call, which can deadlock; a KeyboardInterrupt unwinds, and `kill_spark`
    ends the JVM."""
    interrupts.install()


def _scratch_dir(settings: dict[str, str]) -> Path | None:
    """A directory of our own for Spark's scratch files (`blockmgr-*`, `spark-*`) on a local
    master, unless the user chose one. A JVM ended by `kill_spark` runs no shutdown hooks, so
    Spark cannot remove them itself; this one is removed with the session."""
    if not settings["spark.master"].startswith("local") or "spark.local.dir" in settings:
        return None
    if os.environ.get("SPARK_LOCAL_DIRS"):
        return None
    return Path(tempfile.mkdtemp(prefix="recsys-spark-"))


def _remove_scratch() -> None:
    global _scratch
    if _scratch is not None:
        shutil.rmtree(_scratch, ignore_errors=True)
        _scratch = None


def kill_spark() -> None:
    """End the local JVM at once (after Ctrl-C, when the py4j connection is mid-call and a
    graceful stop would wait on it) and remove its scratch directory. Partial outputs are the
    callers' to remove."""
    from pyspark import SparkContext

    interrupts.forget("spark")
    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None)
    if proc is not None and proc.poll() is None:
        with interrupts.reaping_children(proc.pid):  # its Python workers too
            proc.kill()
            proc.wait(timeout=30)
    SparkContext._gateway = None
    SparkContext._jvm = None
    SparkContext._active_spark_context = None
    _remove_scratch()


def set_shuffle_partitions(spark: SparkSession, input_bytes: int, configured: int | None) -> int:
    """Size `spark.sql.shuffle.partitions` to the input unless the config fixed it."""
    if configured:
        n = int(configured)
    else:
        master = spark.sparkContext.master
        cores = spark.sparkContext.defaultParallelism if not master.startswith("local") else None
        n = shuffle_partitions_for(input_bytes, cores or local_cores(master))
    spark.conf.set("spark.sql.shuffle.partitions", str(n))
    return n


def stop_spark(spark: SparkSession, timeout: float = 120.0) -> None:
    """Stop the session; if this run writes the class archive, end the JVM and keep it."""
    global _pending_archive
    interrupts.forget("spark")
    spark.stop()
    if _pending_archive is None:
        _remove_scratch()
        return
    partial, final = _pending_archive
    _pending_archive = None
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None)
    if proc is None:
        return
    try:
        gateway.shutdown()
        if proc.stdin is not None:
            proc.stdin.close()  # the JVM exits on end of input, writing the archive
        code = proc.wait(timeout=timeout)
    except Exception as e:  # never fail a finished job over the cache
        log.warning("class cache not written: %s", e)
        return
    finally:
        SparkContext._gateway = None
        SparkContext._jvm = None
    _remove_scratch()
    if code == 0 and partial.is_file() and partial.stat().st_size > 0:
        os.replace(partial, final)
        log.debug("class cache written: %s", final)
    else:
        partial.unlink(missing_ok=True)
