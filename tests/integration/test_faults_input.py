"""Bad input is refused with one clear line (issue 14): exit code 2, exactly one `error:` line
on stderr and no traceback, and nothing left behind (no output, no temp directory beside it).

Cases: invalid UTF-8 in a string column, `model.embedding_dim=0`, a CSV with the wrong
separator, a corrupt parquet page, `negative_sample` without a label step. Each goes through
the real command line once; the cheaper in-process tests cover the other paths to the same
message (Spark's own failure when the checks before it cannot run, CSV input, remote input).
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.features.columns import FeatureError
from recsys.features.source import (
    check_csv_files,
    check_parquet_utf8,
    read_part,
    require_rows,
    require_utf8,
    spark_errors,
)
from recsys.preprocess import preprocess
from tests.conftest import REPO, compose_preprocess

pytestmark = pytest.mark.faults

COLUMNS = {"user_id": "string", "item_id": "string", "rating": "float64",
           "timestamp": "int64", "genres": "string"}  # fmt: skip
"""The columns of `dataset=table` (conf/dataset/table.yaml), which `features=ratings` reads."""
PARQUET = ["dataset=table", "features=ratings", "dataset.format=parquet"]
CSV = ["dataset=table", "features=ratings"]


def _ratings(rows: int = 60, bad_items: tuple[int, ...] = ()) -> pa.Table:
    """A tiny ratings table; the `bad_items` rows get an item id that is not UTF-8."""
    rng = np.random.default_rng(0)
    items = [f"m{rng.integers(12)}".encode() for _ in range(rows)]
    for i in bad_items:
        items[i] = b"m\xff" + items[i]
    return pa.table(
        {
            "user_id": [f"u{rng.integers(8)}" for _ in range(rows)],
            # written as bytes and viewed as strings: pyarrow writes them without a check
            "item_id": pa.array(items, pa.binary()).view(pa.string()),
            "rating": rng.integers(1, 6, rows).astype(np.float64),
            "timestamp": np.arange(rows, dtype=np.int64),
            "genres": [str(rng.choice(["Comedy", "Drama|Comedy", ""])) for _ in range(rows)],
        }
    )


def _csv(table: pa.Table, sep: str = ",", header: bool = True) -> bytes:
    lines = [sep.join(table.column_names).encode()] if header else []
    columns = [table[c].cast(pa.binary()).to_pylist() if table[c].type == pa.string()
               else [str(v).encode() for v in table[c].to_pylist()]
               for c in table.column_names]  # fmt: skip
    lines += [sep.encode().join(row) for row in zip(*columns, strict=True)]
    return b"\n".join(lines) + b"\n"


def _corrupt_page(file: Path, column: str) -> None:
    """Overwrite the header of `column`'s first data page: the footer stays valid, so the
    file opens and only reading that column's values fails."""
    meta = pq.ParquetFile(file).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns)
                 if meta.column(i).path_in_schema == column)  # fmt: skip
    with open(file, "r+b") as f:
        f.seek(chunk.data_page_offset)
        f.write(b"\xde\xad\xbe\xef" * 4)


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single line a refused run prints; fails unless it is the whole of stderr."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def _assert_nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def _preprocess_cli(data: Path, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return _cli(
        "recsys.preprocess",
        f"data={data}",
        f"out={tmp_path / 'out'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "spark.cores=2",
        *overrides,
    )


# ------------------------------------------------------------------------ invalid UTF-8


@pytest.mark.integration
def test_invalid_utf8_in_parquet_is_refused_on_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "ratings.parquet"
    pq.write_table(_ratings(bad_items=(3, 7)), data)
    line = _one_error_line(_preprocess_cli(data, tmp_path, *PARQUET))
    assert line == (
        f"error: input file {data}: column 'item_id' holds invalid UTF-8 in 2 rows "
        "(the first is row 4)"
    )
    _assert_nothing_left(tmp_path / "out")


def test_invalid_utf8_is_counted_across_batches_and_columns(tmp_path: Path) -> None:
    table = _ratings(rows=3000, bad_items=(5, 2500, 2999))
    genres = table["genres"].to_pylist()
    genres[10] = b"Com\xe9dy"  # Latin-1, the usual way a file ends up not UTF-8
    mixed = [g if isinstance(g, bytes) else g.encode() for g in genres]
    table = table.set_column(4, "genres", pa.array(mixed, pa.binary()).view(pa.string()))
    file = tmp_path / "r.parquet"
    pq.write_table(table, file, row_group_size=1000)
    with pytest.raises(FeatureError) as err:
        check_parquet_utf8(file, ["user_id", "item_id", "genres"])
    assert str(err.value) == (
        f"input file {file}: column 'item_id' holds invalid UTF-8 in 3 rows (the first is "
        "row 6); column 'genres' holds invalid UTF-8 in 1 row (the first is row 11)"
    )
    check_parquet_utf8(file, ["user_id", "rating"])  # the columns Spark reads are all clean


def test_invalid_utf8_in_csv_is_refused_naming_column_and_line(tmp_path: Path) -> None:
    file = tmp_path / "ratings.csv"
    file.write_bytes(_csv(_ratings(bad_items=(3, 7))))
    with pytest.raises(FeatureError) as err:
        check_csv_files(str(file), COLUMNS, ",", True)
    # line 5: the header, then row 4
    assert str(err.value) == (
        f"input file {file}: column 'item_id' holds invalid UTF-8 in 2 rows (the first on "
        "line 5); save it as UTF-8"
    )
    file.write_bytes(_csv(_ratings()))
    check_csv_files(str(file), COLUMNS, ",", True)


@pytest.mark.integration
def test_invalid_utf8_of_input_read_by_spark_only_is_counted_there(spark, tmp_path) -> None:
    # remote input (no pyarrow pass before Spark) gets the check as a Spark job
    file = tmp_path / "r.parquet"
    pq.write_table(_ratings(bad_items=(1, 2, 3)), file)
    df = spark.read.parquet(str(file))
    with pytest.raises(FeatureError) as err:
        require_utf8(df, "s3://bucket/ratings", ["user_id", "item_id"])
    assert str(err.value) == (
        "input s3://bucket/ratings: column 'item_id' holds invalid UTF-8 in 3 rows"
    )
    require_utf8(df, "s3://bucket/ratings", ["user_id", "genres"])


# ----------------------------------------------------------------- out-of-range config


@pytest.mark.integration
def test_embedding_dim_zero_is_refused_on_the_command_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    line = _one_error_line(
        _cli("recsys.train", "model.embedding_dim=0", f"data={tmp_path}", f"hydra.run.dir={run}")
    )
    assert line == "error: model.embedding_dim must be >= 1, got 0"
    # refused before the run was recorded or anything trained (Hydra's own .hydra/ and log
    # are all the run directory holds)
    assert {p.name for p in run.iterdir()} <= {".hydra", "train.log"}
    # the pipeline refuses it before generating or preprocessing anything
    line = _one_error_line(
        _cli(
            "recsys.pipeline",
            "model.embedding_dim=0",
            f"paths.data_dir={tmp_path / 'data'}",
            f"hydra.run.dir={tmp_path / 'prun'}",
        )
    )
    assert line == "error: model.embedding_dim must be >= 1, got 0"
    assert not (tmp_path / "data").exists()


# ------------------------------------------------------------------- wrong CSV separator


@pytest.mark.integration
def test_a_wrong_csv_separator_is_refused_on_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "ratings.csv"
    data.write_bytes(_csv(_ratings(), sep=";"))
    line = _one_error_line(_preprocess_cli(data, tmp_path, *CSV))
    assert line == (
        f"error: cannot read {data}: header 'user_id;item_id;rating;timestamp;genres' split "
        "with the declared separator ',': missing columns 'user_id', 'item_id', 'rating', "
        "'timestamp', 'genres'; it splits into the declared columns with ';' (dataset.sep)"
    )
    _assert_nothing_left(tmp_path / "out")


def test_a_wrong_separator_without_header_names_the_missing_columns(tmp_path: Path) -> None:
    file = tmp_path / "ratings.tsv"
    file.write_bytes(_csv(_ratings(), sep="\t", header=False))
    with pytest.raises(FeatureError) as err:
        check_csv_files(str(file), COLUMNS, ",", False)
    assert str(err.value).endswith(
        "split with the declared separator ',': missing columns 'item_id', 'rating', "
        "'timestamp', 'genres'; it splits into the declared columns with '\\t' (dataset.sep)"
    )
    check_csv_files(str(file), COLUMNS, "\t", False)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("header", "content", "cause"),
    [
        (True, b"user_id;item_id;rating\nu1;m1;4\n",
         "Number of column in CSV header is not equal to number of fields in the schema: "
         "Header length: 1, schema size: 3 (declared: dataset.sep ',', header true)"),
        (False, b"u1,m1,4\nu2;m2;3\n",
         "Malformed CSV record: u2;m2;3 (declared: dataset.sep ',', header false)"),
        (True, b"user_id,item_id,rating\nu1,m1,4\nu2,m2,abc\n",
         'NumberFormatException: For input string: "abc"'),
    ],
)  # fmt: skip
def test_a_csv_that_spark_fails_on_is_one_line_with_the_cause(
    spark, tmp_path: Path, header: bool, content: bytes, cause: str
) -> None:
    # what Spark reports when the checks before it cannot run (remote files) or pass (a bad
    # line further down): the file and the innermost cause, not `o681.getResult`
    file = tmp_path / "r.csv"
    file.write_bytes(content)
    columns = {"user_id": "string", "item_id": "string", "rating": "float64"}
    dataset = {"format": "csv", "sep": ",", "header": header, "columns": columns}
    df = read_part(spark, str(file), dataset)
    with pytest.raises(FeatureError) as err, spark_errors(str(file), dataset):
        df.toArrow()
    assert str(err.value) == f"cannot read {file}: {cause}"


# ----------------------------------------------------------------- corrupt parquet page


@pytest.mark.integration
def test_a_corrupt_parquet_page_is_refused_on_the_command_line(tmp_path: Path) -> None:
    # a numeric column: the string columns' pass before Spark does not read it, Spark does
    data = tmp_path / "ratings.parquet"
    pq.write_table(_ratings(), data)
    _corrupt_page(data, "rating")
    line = _one_error_line(_preprocess_cli(data, tmp_path, *PARQUET))
    assert line.startswith(f"error: cannot read {data}: "), line
    assert "PageHeader" in line and "getResult" not in line, line
    _assert_nothing_left(tmp_path / "out")


def test_a_corrupt_page_of_a_string_column_is_found_before_spark(tmp_path: Path) -> None:
    file = tmp_path / "r.parquet"
    pq.write_table(_ratings(), file)
    _corrupt_page(file, "item_id")
    with pytest.raises(FeatureError, match=rf"^cannot read {file}: .*page header"):
        check_parquet_utf8(file, ["user_id", "item_id"])


@pytest.mark.integration
def test_an_unreadable_parquet_in_spark_names_the_file(spark, tmp_path: Path) -> None:
    file = tmp_path / "r.parquet"
    file.write_bytes(b"PAR1 not a parquet file at all PAR1")
    with pytest.raises(FeatureError, match=rf"^cannot read {file}: corrupted file"):
        read_part(spark, str(file), {"format": "parquet"})  # schema inference reads it


@pytest.mark.integration
def test_a_corrupt_page_leaves_no_output_in_process(spark, tmp_path: Path) -> None:
    data = tmp_path / "ratings.parquet"
    pq.write_table(_ratings(), data)
    _corrupt_page(data, "timestamp")
    out = tmp_path / "out"
    cfg = compose_preprocess([f"data={data}", f"out={out}", *PARQUET], tmp_path / "run")
    with pytest.raises(FeatureError, match=rf"^cannot read {data}: .*PageHeader"):
        preprocess(cfg, spark=spark)
    _assert_nothing_left(out)
    # the session is still usable after the failed job
    require_rows(spark.range(3).toDF("x"), str(data), "train")


@pytest.mark.integration
def test_a_failure_that_is_not_the_inputs_keeps_its_traceback(spark, tmp_path: Path) -> None:
    # a bug in a job over readable input is not dressed up as "cannot read"
    from pyspark.errors import PySparkException
    from pyspark.sql import functions as F

    file = tmp_path / "r.parquet"
    pq.write_table(_ratings(), file)
    job = spark.read.parquet(str(file)).select(F.raise_error(F.lit("a bug")))
    with pytest.raises(PySparkException, match="a bug"), spark_errors(str(file)):
        job.collect()


# ---------------------------------------------------------- feature steps out of order


@pytest.mark.integration
def test_negative_sampling_without_a_label_step_is_refused_at_once(tmp_path: Path) -> None:
    data = tmp_path / "ratings.csv"
    data.write_bytes(_csv(_ratings()))
    line = _one_error_line(_preprocess_cli(data, tmp_path, *CSV, "~features.steps.label"))
    assert line.startswith(
        "error: step 'negatives' (negative_sample) needs its label column 'label' from an "
        "earlier step (op: label) or the dataset"
    )
    _assert_nothing_left(tmp_path / "out")
