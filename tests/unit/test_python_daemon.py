"""Spark's Python workers import the installed pyspark, not the zip copy Spark puts first."""

import os
import subprocess
import sys
from pathlib import Path

import pyspark

from recsys.features.python_daemon import installed_copies

ZIPS = sorted(str(p) for p in (Path(pyspark.__file__).parent / "python" / "lib").glob("*.zip"))
SITE = str(Path(pyspark.__file__).parents[1])


def _fake_install(root: Path, *packages: str) -> list[str]:
    lib = root / "pyspark" / "python" / "lib"
    lib.mkdir(parents=True)
    for name in packages:
        (root / name).mkdir(exist_ok=True)
        (root / name / "__init__.py").write_text("")
    zips = [lib / "pyspark.zip", lib / "py4j-0.10.9.9-src.zip"]
    for z in zips:
        z.write_bytes(b"")
    return [str(z) for z in zips]


def test_only_zip_copies_of_installed_packages_are_dropped(tmp_path: Path) -> None:
    zips = _fake_install(tmp_path / "site", "pyspark", "py4j")
    assert installed_copies([*zips, "/elsewhere", str(tmp_path / "site")]) == zips
    # the installed package is not importable (its directory is not on the path): keep them
    assert installed_copies([*zips, "/elsewhere"]) == []
    # a cluster's Spark home with no py4j package beside it keeps its py4j zip
    zips = _fake_install(tmp_path / "spark_home", "pyspark")
    assert installed_copies([*zips, str(tmp_path / "spark_home")]) == zips[:1]


def _imported_from(drop: bool) -> str:
    """Where `import pyspark` comes from with Spark's worker PYTHONPATH (the zips first)."""
    code = (
        "import sys\n"
        "from recsys.features.python_daemon import installed_copies\n"
        f"if {drop}:\n"
        "    for e in installed_copies(sys.path): sys.path.remove(e)\n"
        "import pyspark, py4j\n"
        "print(pyspark.__file__, py4j.__file__)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(ZIPS)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True)  # fmt: skip
    return result.stdout


def test_workers_import_the_installed_pyspark() -> None:
    assert len(ZIPS) == 2  # pyspark.zip and py4j-*-src.zip, as pip installs them
    assert ".zip" in _imported_from(drop=False)  # what Spark's PYTHONPATH alone gives
    imported = _imported_from(drop=True)
    assert ".zip" not in imported
    assert imported.split()[0].startswith(SITE)
