"""Raw data on disk -> Spark DataFrames, with errors that name the file or column at fault.

Layout of `data` (the `data=` key of `recsys.preprocess`):

- a directory with `train/` (and optionally `valid/`, `test/`) subdirectories, as
  `recsys.generate` writes: each present part is read as it is, missing parts are split off
  the training part (`split` config);
- anything else (one file, a directory of files, a glob): one table, split into
  train / valid / test.

Formats: parquet, or CSV with the declared columns in file order (`sep`, `header`). A parquet
list column declared `list<string>` or `list<int64>` is read as a list; CSV has no list type
(declare such a column `string` and split it in the `category` step).
Before Spark reads local files, each is checked here, so that bad input is reported by name
before the JVM starts instead of deep inside a Spark job: every parquet footer is read (a
corrupt or truncated file), the string columns Spark will read are decoded (invalid UTF-8,
which Spark would carry into the vocabularies, and corrupt pages of those columns); a CSV
file's first line is split with the declared separator (a wrong `sep` or header) and its
bytes must be UTF-8 (Spark would silently turn bad bytes into U+FFFD).
What Spark still finds (remote input, other columns' pages, later CSV lines) becomes one line
naming the file and the innermost cause (`spark_errors`).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.features.columns import (
    LIST_TYPES,
    FeatureError,
    check_arrow_type,
    check_declared,
    require_columns,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

PARTS = ("train", "valid", "test")
FORMATS = ("parquet", "csv")


@dataclass
class SourceParts:
    """Paths of the parts found under `data` (None: to be split off train)."""

    train: str
    valid: str | None
    test: str | None


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> Path:
    return Path(path[len("file://") :] if path.startswith("file://") else path)


def find_parts(data: str) -> SourceParts:
    """Which parts `data` already holds (see the module docstring)."""
    if is_local(data):
        root = _local(data)
        if not root.exists() and not any(ch in data for ch in "*?["):
            raise FeatureError(f"input {data} does not exist")
        if root.is_dir() and (root / "train").exists():
            parts = {p: str(root / p) if (root / p).exists() else None for p in PARTS}
            return SourceParts(parts["train"], parts["valid"], parts["test"])  # type: ignore[arg-type]
    return SourceParts(data, None, None)


def data_files(path: str, fmt: str) -> list[Path]:
    """The data files Spark would read at a local `path` (hidden and _ files skipped)."""
    root = _local(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        return sorted(p for p in root.parent.glob(root.name) if p.is_file())
    suffix = ".parquet" if fmt == "parquet" else ""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
        and p.name.endswith(suffix)
    )


@dataclass
class PartInfo:
    """What is known about one part before Spark reads it."""

    path: str
    rows: int | None  # from the parquet footers (local parquet), else unknown
    bytes: int  # size on disk (0 when not local)
    # the needed columns' types when every footer agrees on them (local parquet): Spark
    # then reads with this schema instead of running jobs to infer one
    schema: pa.Schema | None = None


def check_parquet_files(
    path: str, declared: Mapping[str, str], needed: list[str]
) -> tuple[int, pa.Schema | None]:
    """Read every parquet footer under a local `path`: readable, one schema, holding the
    `needed` columns with types readable as declared. Returns the row count and the needed
    columns' schema if every file has the same one of plain types (`known_schema`)."""
    files = data_files(path, "parquet")
    if not files:
        raise FeatureError(f"input {path} holds no parquet files (empty input)")
    rows = 0
    schemas = set()
    for file in files:
        try:
            meta = pq.read_metadata(file)
        except (OSError, pa.ArrowException) as e:
            raise FeatureError(f"input file {file} is not a readable parquet file: {e}") from e
        schema = meta.schema.to_arrow_schema()
        where = f"input {path}" if len(files) == 1 else f"input file {file}"
        require_columns(schema.names, needed, where)
        for name in needed:
            check_arrow_type(name, declared.get(name), schema.field(name).type)
        rows += meta.num_rows
        schemas.add(pa.schema([pa.field(n, schema.field(n).type) for n in needed]))
        text = [n for n in needed if _holds_text(schema.field(n).type)]
        check_parquet_utf8(file, text)
    return rows, known_schema(schemas.pop()) if len(schemas) == 1 else None


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _holds_text(t: pa.DataType) -> bool:
    """A string column, or a list column of strings."""
    return _is_text(t) or (_is_list(t) and _is_text(t.value_type))


def check_parquet_utf8(file: Path, columns: Sequence[str]) -> None:
    """Refuse invalid UTF-8 in the string `columns` of one parquet file, naming each bad
    column and how many rows hold it.

    Parquet readers (pyarrow's and Spark's) do not check that string values are UTF-8, so bad
    bytes would otherwise reach the vocabularies and break whoever decodes them later. Only
    the columns Spark will read are decoded, batch by batch (about 0.05 s for the 100k-row
    demo data); a page that cannot be decoded at all is reported here too.
    """
    if not columns:
        return
    bad: dict[str, tuple[int, int]] = {}  # column -> (rows, first row counted from 1)
    offset = 0
    try:
        for batch in pq.ParquetFile(file).iter_batches(columns=list(columns)):
            for name, values in zip(batch.schema.names, batch.columns, strict=True):
                if _is_list(values.type):
                    # a bad element counts against the row holding it
                    parents = pc.list_parent_indices(values).to_numpy(zero_copy_only=False)
                    elements = _invalid_utf8_rows(pc.list_flatten(values))
                    rows = sorted({int(parents[i]) for i in elements})
                else:
                    rows = _invalid_utf8_rows(values)
                if rows:
                    count, first = bad.get(name, (0, offset + rows[0] + 1))
                    bad[name] = (count + len(rows), first)
            offset += batch.num_rows
    except (OSError, pa.ArrowException) as e:
        raise FeatureError(f"cannot read {file}: {_one_line(str(e))}") from e
    if bad:
        what = "; ".join(
            f"column {name!r} holds invalid UTF-8 in {_rows(count)} (the first is row {first})"
            for name, (count, first) in bad.items()
        )
        raise FeatureError(f"input file {file}: {what}")


def _invalid_utf8_rows(values: pa.Array) -> list[int]:
    """Positions of the values that are not UTF-8 (Arrow's full validation checks every
    string at C++ speed; only a batch that fails it is decoded value by value)."""
    try:
        values.validate(full=True)
        return []
    except pa.ArrowInvalid:
        pass
    rows = []
    for i, raw in enumerate(values.cast(pa.large_binary()).to_pylist()):
        if raw is None:
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            rows.append(i)
    return rows


def _rows(n: int) -> str:
    return f"{n:,} row{'s' if n != 1 else ''}"


CSV_READ_BYTES = 16 * 1024 * 1024
SEPARATORS = (",", ";", "\t", "|")


def check_csv_files(path: str, declared: Mapping[str, str], sep: str, header: bool) -> None:
    """Each local CSV file's first line splits into the declared columns with `sep` (and
    names them, with a header), and every byte of it is UTF-8."""
    for file in data_files(path, "csv"):
        check_csv_first_line(file, list(declared), sep, header)
        check_csv_utf8(file, list(declared), sep)


def _split(line: str, sep: str) -> list[str]:
    if len(sep) == 1:
        return next(csv.reader([line], delimiter=sep), [])
    return line.split(sep)  # Spark takes separators of several characters; csv does not


def _names(line: str, sep: str) -> list[str]:
    """Header names as Spark compares them with the schema (case-insensitively)."""
    return [f.strip().lower() for f in _split(line, sep)]


def check_csv_first_line(file: Path, columns: list[str], sep: str, header: bool) -> None:
    """Refuse a first line that a wrong separator (or header) would make Spark fail on,
    naming the missing columns, the declared separator and one that would fit."""
    with open(file, "rb") as f:
        first = f.readline()
    line = first.decode("utf-8", "replace").removeprefix("\ufeff").rstrip("\r\n")
    if not line:
        return  # an empty file holds no rows
    fields = _split(line, sep)
    if header:
        wanted = [c.lower() for c in columns]
        names = _names(line, sep)
        if names == wanted:
            return
        missing = [c for c in columns if c.lower() not in names]
        what = (
            _missing(missing)
            if missing
            else f"its columns are {fields}, declared {columns} (dataset.columns, in file order)"
        )
        fits = [s for s in SEPARATORS if s != sep and _names(line, s) == wanted]
        problem = f"header {line[:120]!r} split with the declared separator {sep!r}: {what}"
    else:
        if len(fields) == len(columns):
            return
        missing = columns[len(fields) :]
        what = _missing(missing) if missing else f"{len(fields)} fields for {len(columns)} columns"
        fits = [s for s in SEPARATORS if s != sep and len(_split(line, s)) == len(columns)]
        problem = f"line 1 {line[:120]!r} split with the declared separator {sep!r}: {what}"
    hint = f"; it splits into the declared columns with {fits[0]!r} (dataset.sep)" if fits else ""
    raise FeatureError(f"cannot read {file}: {problem}{hint}")


def _missing(columns: list[str]) -> str:
    return f"missing column{'s' if len(columns) > 1 else ''} {', '.join(map(repr, columns))}"


def check_csv_utf8(file: Path, columns: list[str], sep: str) -> None:
    """Refuse bytes that are not UTF-8 (Spark decodes them to U+FFFD without a word). The
    file is decoded in chunks; only a file that fails is read again line by line to name the
    columns and count the rows."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(file, "rb") as f:
            while chunk := f.read(CSV_READ_BYTES):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
        return
    except UnicodeDecodeError:
        pass
    bad: dict[str, tuple[int, int]] = {}  # column -> (rows, first line)
    with open(file, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
                continue
            except UnicodeDecodeError:
                pass
            fields = _split(raw.decode("utf-8", "surrogateescape").rstrip("\r\n"), sep)
            for i, value in enumerate(fields):
                if any("\udc80" <= ch <= "\udcff" for ch in value):
                    name = columns[i] if i < len(columns) else f"field {i + 1}"
                    count, first = bad.get(name, (0, number))
                    bad[name] = (count + 1, first)
    what = "; ".join(
        f"column {name!r} holds invalid UTF-8 in {_rows(count)} (the first on line {first})"
        for name, (count, first) in bad.items()
    )
    raise FeatureError(f"input file {file}: {what or 'invalid UTF-8'}; save it as UTF-8")


PLAIN_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_signed_integer,
               pa.types.is_floating, pa.types.is_boolean)  # fmt: skip


def known_schema(schema: pa.Schema) -> pa.Schema | None:
    """`schema` if Spark would infer exactly its types from the file (strings, signed
    integers, floats, booleans), else None (timestamps, decimals, nested types: let Spark
    infer them)."""
    if all(any(is_type(f.type) for is_type in PLAIN_TYPES) for f in schema):
        return schema
    return None


def inspect_part(path: str, dataset: Mapping[str, Any], needed: list[str]) -> PartInfo:
    """The checks that need no Spark, so that bad input fails before the JVM starts."""
    fmt = dataset.get("format", "parquet")
    if fmt not in FORMATS:
        raise FeatureError(f"dataset.format {fmt!r} is not one of {', '.join(FORMATS)}")
    declared = dict(dataset.get("columns") or {})
    check_declared(declared)
    if not is_local(path):
        return PartInfo(path, None, 0)
    schema = None
    if fmt == "parquet":
        rows, schema = check_parquet_files(path, declared, needed)
    else:
        if not declared:
            raise FeatureError("dataset.columns must declare the CSV columns in file order")
        lists = [name for name, t in declared.items() if t in LIST_TYPES]
        if lists:
            raise FeatureError(
                f"column {lists[0]!r} is declared {declared[lists[0]]}, but CSV has no list "
                "type: declare it string and give the category step its separator (split:)"
            )
        if not data_files(path, "csv"):
            raise FeatureError(f"input {path} holds no files (empty input)")
        check_csv_files(path, declared, dataset.get("sep", ","), bool(dataset.get("header", True)))
        rows = None
    return PartInfo(path, rows, sum(f.stat().st_size for f in data_files(path, fmt)), schema)


def spark_schema(columns: Mapping[str, str]):
    from pyspark.sql import types as T

    types = {
        "string": T.StringType(),
        "int64": T.LongType(),
        "float64": T.DoubleType(),
        "bool": T.BooleanType(),
    }
    return T.StructType([T.StructField(name, types[t]) for name, t in columns.items()])


def read_part(
    spark: SparkSession, path: str, dataset: Mapping[str, Any], schema: pa.Schema | None = None
) -> DataFrame:
    """One part as a Spark DataFrame (lazy; `inspect_part` has checked what it can). A known
    parquet `schema` (the columns to read) spares Spark's schema inference jobs."""
    with spark_errors(path, dataset):
        if dataset.get("format", "parquet") == "parquet":
            if schema is not None:
                from pyspark.sql.pandas.types import from_arrow_schema

                return spark.read.schema(from_arrow_schema(schema)).parquet(path)
            return spark.read.parquet(path)
        return spark.read.csv(
            path,
            schema=spark_schema(dict(dataset.get("columns") or {})),
            sep=dataset.get("sep", ","),
            header=bool(dataset.get("header", True)),
            enforceSchema=False,
            mode="FAILFAST",
        )


def require_utf8(df: DataFrame, path: str, columns: Sequence[str]) -> None:
    """Refuse invalid UTF-8 in the string `columns` of input that pyarrow could not check
    before Spark (remote parquet): one Spark job over those columns."""
    if not columns:
        return
    from pyspark.sql import functions as F

    with spark_errors(path):
        counts = df.select(
            *[F.count_if(~F.is_valid_utf8(F.col(c))).alias(f"c{i}") for i, c in enumerate(columns)]
        ).first()
    bad = {c: int(n) for c, n in zip(columns, counts, strict=True) if n}
    if bad:
        what = "; ".join(f"column {c!r} holds invalid UTF-8 in {_rows(n)}" for c, n in bad.items())
        raise FeatureError(f"input {path}: {what}")


def require_rows(
    df: DataFrame,
    path: str,
    part: str,
    rows: int | None = None,
    dataset: Mapping[str, Any] | None = None,
) -> None:
    """Refuse an empty part (from the known row count, else with a Spark job)."""
    if rows is None:
        with spark_errors(path, dataset):
            rows = 0 if df.isEmpty() else 1
    if rows == 0:
        raise FeatureError(f"input {path} has no rows ({part} part is empty)")


# ------------------------------------------------------------------- Spark errors

_MARKER = re.compile(r"column '[^']+': value .*?(?:is not [^\n.]+)")
_FILE = re.compile(r"(file:[^\s,'\"\]]+|/[^\s,'\"\]]+\.(?:parquet|csv|txt))")
# the file a failed scan names: "[FAILED_READ_FILE...] Encountered error while reading file <uri>."
_READ_FILE = re.compile(r"while reading file (\S+?)\.?(?:\s|$)")
_ERROR_CLASS = re.compile(r"^\[[A-Z0-9_.]+\]\s*")
_SQLSTATE = re.compile(r"\s*SQLSTATE: \w+\.?\s*$")
_WRAPPERS = ("Exception thrown in awaitResult", "Job aborted due to stage failure")
MAX_CAUSE_CHARS = 300


def _one_line(text: str, limit: int = MAX_CAUSE_CHARS) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _java_chain(e: BaseException) -> list[tuple[str, str]]:
    """(class, message) of the Java exception behind a PySpark or Py4J error and of each of
    its causes, outermost first (empty when there is none, or the JVM is gone)."""
    throwable = getattr(e, "java_exception", None) or getattr(e, "_origin", None)
    chain: list[tuple[str, str]] = []
    try:
        while throwable is not None and len(chain) < 30:  # a cause chain can loop
            chain.append((str(throwable.getClass().getName()), str(throwable.getMessage() or "")))
            throwable = throwable.getCause()
    except Exception:  # the JVM went away while we asked: keep what we have
        pass
    return chain


def _clean(message: str) -> str:
    """A Java message without Spark's error class, SQLSTATE and trailing file line."""
    lines = [ln for ln in message.strip().splitlines() if not ln.startswith("CSV file:")]
    text = _ERROR_CLASS.sub("", " ".join(ln.strip() for ln in lines))
    return _SQLSTATE.sub("", text).strip()


def root_cause(chain: list[tuple[str, str]]) -> str | None:
    """The innermost message of `chain`, or the message around it when that one only adds
    context (`can not read class PageHeader: don't know what type: 14` rather than its
    cause's `don't know what type: 14`)."""
    messages = [(cls, _clean(msg)) for cls, msg in chain]
    messages = [(cls, m) for cls, m in messages if m and not m.startswith(_WRAPPERS)]
    if not messages:
        return None
    i = len(messages) - 1
    while i > 0 and messages[i][1] in messages[i - 1][1]:
        i -= 1
    cls, message = messages[i]
    name = cls.rsplit(".", 1)[-1]
    if len(message) < 40 and not name.startswith("Spark"):
        # a bare detail (`For input string: "abc"`) reads better with its class
        message = f"{name}: {message}"
    return message


def _local_name(uri: str) -> str:
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


@contextlib.contextmanager
def spark_errors(path: str, dataset: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Turn a failed Spark read or job caused by the input at `path` into a one-line
    FeatureError: `cannot read <file>: <root cause>`.

    Bad values caught by the coercion (`raise_error` in columns.py) keep their message. A
    failure that Spark reports against a file (corrupt page, malformed CSV record, a header
    that does not match) names that file and the innermost cause from the Java exception
    chain, instead of Py4J's `An error occurred while calling o681.getResult`; a CSV failure
    adds the declared separator. Anything else is a bug and keeps its traceback.
    """
    try:
        yield
    except FeatureError:
        raise
    except Exception as e:
        from py4j.protocol import Py4JError
        from pyspark.errors import PySparkException

        if not isinstance(e, PySparkException | Py4JError):
            raise
        text = str(e)
        marker = _MARKER.search(text)
        if marker:
            raise FeatureError(f"input {path}: {marker.group(0)}") from e
        chain = _java_chain(e)
        everything = "\n".join([text, *(m for _, m in chain)])
        named = _READ_FILE.search(everything) or _FILE.search(everything)
        if not (named or "Parquet" in everything or "CSV" in everything):
            raise
        file = _local_name(named.group(1).rstrip(".")) if named else path
        cause = root_cause(chain) or next(
            (ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__
        )
        cause = _one_line(cause)
        if dataset is not None and dataset.get("format") == "csv" and "CSV" in everything:
            cause += f" (declared: dataset.sep {dataset.get('sep', ',')!r}, header "
            cause += f"{str(bool(dataset.get('header', True))).lower()})"
        raise FeatureError(f"cannot read {file}: {cause}") from e
