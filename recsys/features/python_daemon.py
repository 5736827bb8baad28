"""Spark's Python worker daemon, importing the installed pyspark instead of its zip copy.

Spark starts Python workers with `PYTHONPATH=$SPARK_HOME/python/lib/pyspark.zip:...` first.
With a pip-installed pyspark, `SPARK_HOME` is the installed package itself, so the zip holds
the same sources, but without bytecode: the daemon and every worker it forks compile pyspark
again (measured here: the daemon took 1.5 s to start, each worker about 1 s, before the first
row of a UDF). Dropping those zip entries makes Python import the installed package and its
cached bytecode; nothing changes when pyspark is not installed next to the zip (a cluster's
own Spark), as the entries are then kept.

Used through `spark.python.daemon.module` (see `recsys.features.spark.spark_settings`).
"""

import sys
from pathlib import Path


def installed_copies(path: list[str]) -> list[str]:
    """Entries of `path` that are zip copies of a pyspark / py4j installed on `path`."""
    on_path = {str(Path(p).resolve()) for p in path if p and not p.endswith(".zip")}
    dropped = []
    for entry in path:
        zipped = Path(entry)
        if zipped.suffix != ".zip" or zipped.parent.parts[-3:] != ("pyspark", "python", "lib"):
            continue
        package = zipped.parents[2]  # .../site-packages/pyspark
        name = "pyspark" if zipped.name == "pyspark.zip" else "py4j"
        installed = package.parent / name / "__init__.py"
        if installed.is_file() and str(package.parent.resolve()) in on_path:
            dropped.append(entry)
    return dropped


def main() -> None:
    for entry in installed_copies(sys.path):
        sys.path.remove(entry)
    from pyspark.daemon import manager

    from recsys.interrupts import pause_point

    pause_point("features")  # a test interrupts the driver while its Spark job waits here

    manager()


if __name__ == "__main__":
    main()
