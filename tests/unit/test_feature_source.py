"""Input checks before Spark starts: the schema handed to Spark instead of inferring one."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.features.source import check_parquet_files, known_schema

NEEDED = ["user", "count"]


def _write(directory: Path, name: str, table: pa.Table) -> None:
    directory.mkdir(exist_ok=True)
    pq.write_table(table, directory / name)


def test_the_needed_columns_schema_is_known_when_every_file_agrees(tmp_path: Path) -> None:
    table = pa.table({"user": ["a", "b"], "count": [1, 2], "other": [0.5, 1.5]})
    _write(tmp_path / "part", "part-0.parquet", table)
    _write(tmp_path / "part", "part-1.parquet", table.slice(1))
    rows, schema = check_parquet_files(str(tmp_path / "part"), {}, NEEDED)
    assert rows == 3
    assert schema == pa.schema([("user", pa.string()), ("count", pa.int64())])


def test_no_schema_when_files_disagree_or_types_need_inference(tmp_path: Path) -> None:
    _write(tmp_path / "mixed", "a.parquet", pa.table({"user": ["a"], "count": [1]}))
    _write(tmp_path / "mixed", "b.parquet",
           pa.table({"user": ["b"], "count": pa.array([2], pa.int32())}))  # fmt: skip
    assert check_parquet_files(str(tmp_path / "mixed"), {}, NEEDED) == (2, None)
    stamped = pa.schema([("user", pa.string()), ("at", pa.timestamp("us", tz="UTC"))])
    assert known_schema(stamped) is None
    nested = pa.schema([("user", pa.string()), ("tags", pa.list_(pa.string()))])
    assert known_schema(nested) is None
    plain = pa.schema([("s", pa.string()), ("i", pa.int32()), ("f", pa.float32()),
                       ("b", pa.bool_())])  # fmt: skip
    assert known_schema(plain) == plain
