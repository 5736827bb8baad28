"""Raw data -> model-ready data on Spark (`features=<name>`):

    python -m recsys.preprocess features=recsys2021_wnd data=data/recsys2021 out=data/wnd

Raw data -> model-ready data on Spark: read and check the input, split it (seeded), fit the
feature pipeline on train, transform train / valid / test, and write, atomically:

    <out>/train/ valid/ test/          processed parquet (the FeatureSpec's column contract)
    <out>/feature_spec.json            every output feature: kind, size, stats, entity, inputs
    <out>/pipeline/                    fitted state: pipeline.json + vocabularies/*.parquet
    <out>/user_features/ item_features/  one row per known user / item, for serving
    <out>/_preprocess.json             rows per split, timings, settings

Everything is written to a temp directory beside `out` and renamed into place at the end,
so `out` is either complete or absent. docs/features.md describes the configs.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from recsys import interrupts
from recsys.cli import run_task
from recsys.config import CONF_DIR, register_configs
from recsys.config.checks import check_ranges
from recsys.features.columns import FeatureError, MissingColumnError
from recsys.features.pipeline import FeaturePipeline
from recsys.features.side_tables import (
    SideTable,
    declared_columns,
    inspect_side,
    join_side,
    needed_sides,
    read_side,
    side_tables,
)
from recsys.features.source import (
    PartInfo,
    find_parts,
    inspect_part,
    read_part,
    require_rows,
    require_utf8,
    spark_errors,
)
from recsys.features.spark import (
    build_spark,
    kill_spark,
    plain_sigint,
    set_shuffle_partitions,
    stop_spark,
)
from recsys.features.split import (
    CONTENT_COLUMN,
    MIN_KEPT,
    PART_COLUMN,
    TAGGED_METHODS,
    check_fractions,
    part_sources,
    parts_of,
    split_columns,
    split_frame,
    tag_frame,
    with_content_hash,
)
from recsys.features.tables import TABLE_COLUMN, finish_table, latest_rows, table_specs
from recsys.provenance import run_log_file, swap_in, write_json_atomic

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)
register_configs()

SPLITS = ("train", "valid", "test")
PIPELINE_DIR = "pipeline"
SUMMARY_FILE = "_preprocess.json"
SPLIT_COLUMN = "__split"
RANKED_DIR = "ranked"  # the tagged raw rows of a windowed split, removed before the swap


@dataclass
class PreprocessSummary:
    """What one run wrote (also saved as `_preprocess.json`)."""

    out: str
    features: str
    data: str
    rows: dict[str, int]
    tables: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    shuffle_partitions: int = 0
    sources: dict[str, str] = field(default_factory=dict)  # split -> input | carved | absent


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_pipeline(cfg: DictConfig) -> FeaturePipeline:
    """The configured pipeline (checks every step and output before any data is read)."""
    dataset = _container(cfg.dataset)
    if "columns" not in dataset or "path" not in dataset:
        raise FeatureError(
            f"dataset={dataset.get('name')} does not describe data on disk with declared "
            "columns; use dataset=recsys2021, criteo or table"
        )
    # the side tables' columns too: the steps read the joined table
    return FeaturePipeline.from_config(_container(cfg.features), declared_columns(dataset))


def check_preprocess(cfg: DictConfig) -> None:
    """Fail before Spark starts: bad values, bad features config, bad split, existing output."""
    check_ranges(cfg, FeatureError)
    build_pipeline(cfg)
    check_fractions(cfg.split.valid_fraction, cfg.split.test_fraction)
    split_columns(_container(cfg.split), _container(cfg.dataset), _container(cfg.features))
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise FeatureError(f"output {out} already exists; pass overwrite=true to replace it")


def preprocess(cfg: DictConfig, spark: SparkSession | None = None) -> PreprocessSummary:
    """Run the whole job; reuse `spark` if given (tests), else build and stop one (its JVM's
    console output going to the run's log file inside a Hydra app)."""
    t0 = time.perf_counter()
    check_preprocess(cfg)
    pipeline = build_pipeline(cfg)
    inputs = inspect_inputs(cfg, pipeline)  # bad input fails here, before Spark starts
    own_spark = spark is None
    if own_spark:
        try:
            spark = build_spark(_container(cfg.spark), jvm_log=run_log_file())
        except KeyboardInterrupt:
            kill_spark()
            raise
    stages = {"spark_start": round(time.perf_counter() - t0, 2)}
    out = Path(cfg.out)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    plain_sigint()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        summary = _run(cfg, spark, pipeline, inputs, tmp, stages)
        summary.seconds = round(time.perf_counter() - t0, 2)
        summary.out = str(out)
        write_json_atomic(tmp / SUMMARY_FILE, asdict(summary))
        swap_in(tmp, out)
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt) or interrupts.received()
        if interrupted and (own_spark or interrupts.received()):
            # first, so that no executor thread goes on writing into `tmp`; a graceful stop
            # would wait on the interrupted py4j call
            kill_spark()
        shutil.rmtree(tmp, ignore_errors=True)
        if own_spark and not interrupted:
            stop_spark(spark)
        raise
    if own_spark:
        stop_spark(spark)
    log.info(format_summary(summary))
    return summary


@dataclass
class Inputs:
    """The parts of the input and what is known of them before Spark starts."""

    parts: dict[str, PartInfo | None]  # train / valid / test (None: split off train)
    needed: list[str]  # raw columns to read
    time_column: str | None
    user_column: str | None = None  # split.method=per_user_time only
    own: list[str] = field(default_factory=list)  # of `needed`, those read from the parts
    sides: list[tuple[SideTable, PartInfo]] = field(default_factory=list)  # to join
    # where each split comes from: input | carved | absent (recsys.features.split.part_sources)
    sources: dict[str, str] = field(default_factory=dict)


def inspect_inputs(cfg: DictConfig, pipeline: FeaturePipeline) -> Inputs:
    dataset = _container(cfg.dataset)
    split = _container(cfg.split)
    time_column, user_column = split_columns(split, dataset, _container(cfg.features))
    extra = [c for c in (time_column, user_column) if c]
    needed = list(dict.fromkeys([*pipeline.raw_columns, *extra]))
    sides = needed_sides(side_tables(dataset), needed)
    joined = {c for t in sides for c in t.joined}
    own = list(dict.fromkeys([*(c for c in needed if c not in joined), *(t.key for t in sides)]))
    found = find_parts(str(cfg.data))
    has = {"valid": found.valid is not None, "test": found.test is not None}
    sources = part_sources(split, has, str(cfg.data))
    parts = {
        name: inspect_part(path, dataset, own) if path is not None else None
        for name, path in ((n, getattr(found, n)) for n in SPLITS)
    }
    side_infos = [(t, inspect_side(t, needed)) for t in sides]
    return Inputs(parts, needed, time_column, user_column, own, side_infos, sources=sources)


def _run(
    cfg: DictConfig,
    spark: SparkSession,
    pipeline: FeaturePipeline,
    inputs: Inputs,
    tmp: Path,
    stages: dict[str, float],
) -> PreprocessSummary:
    t = time.perf_counter()
    dataset = _container(cfg.dataset)
    data = str(cfg.data)
    time_column = inputs.time_column
    keep = [time_column] if time_column else []
    fmt = dataset.get("format", "parquet")
    train_part = inputs.parts["train"]
    partitions = set_shuffle_partitions(spark, train_part.bytes, cfg.spark.shuffle_partitions)

    frames: dict[str, DataFrame | None] = {}
    sides = [(t, read_side(spark, t, info, inputs.needed)) for t, info in inputs.sides]
    for name, part in inputs.parts.items():
        if part is None:
            frames[name] = None
            continue
        df = read_part(spark, part.path, dataset, part.schema)
        missing = [c for c in inputs.own if c not in df.columns]
        if missing:
            raise MissingColumnError(
                f"input {part.path}: missing column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(c) for c in missing)}"
            )
        if name == "train" and cfg.split.method == "random" and "carved" in inputs.sources.values():
            df = _hashed_content(spark, df, part, dataset, cfg.seed)
        frames[name] = df.select(*inputs.own, *[c for c in df.columns if c == CONTENT_COLUMN])
        if part.rows is None and fmt == "parquet":  # not checked before Spark (remote)
            text = [c for c in inputs.own if dataset["columns"].get(c) == "string"]
            require_utf8(frames[name], part.path, text)
        for table, side in sides:
            frames[name] = join_side(frames[name], side, table, part.path)
    train = frames["train"]
    require_rows(train, train_part.path, "train", train_part.rows, dataset)
    split = cfg.split
    carved = [name for name, source in inputs.sources.items() if source == "carved"]
    absent = [name for name, source in inputs.sources.items() if source == "absent"]
    if absent:
        log.info("split.absent=%s: no %s split (not carved, not written)", absent, absent)
    if carved:
        valid_fraction = split.valid_fraction if "valid" in carved else 0.0
        test_fraction = split.test_fraction if "test" in carved else 0.0
        log.info(
            "no %s part in %s: carving %s from train (split.method=%s)",
            " or ".join(f"{name}/" for name in carved),
            data,
            ", ".join(f"split.{name}_fraction={split[f'{name}_fraction']}" for name in carved),
            split.method,
        )
        with spark_errors(train_part.path, dataset):
            if split.method in TAGGED_METHODS:
                # the fitted steps embed train's plan dozens of times and Spark analyses the
                # window in each copy again (the ratings test: 133 s, 92 of them building
                # plans; persist() does not shorten plans): rank once, read back a plain scan
                # (then 36 s, about what a window-free split takes)
                tag_frame(
                    train,
                    split.method,
                    valid_fraction,
                    test_fraction,
                    cfg.seed,
                    time_column,
                    inputs.user_column,
                ).write.partitionBy(PART_COLUMN).parquet(str(tmp / RANKED_DIR))
                train, valid, test = parts_of(spark.read.parquet(str(tmp / RANKED_DIR)))
            else:
                train, valid, test = split_frame(
                    train, split.method, valid_fraction, test_fraction, cfg.seed, time_column
                )
        frames.update({name: part for name, part in zip(SPLITS, (None, valid, test), strict=True)
                       if name in carved})  # fmt: skip
    frames["train"] = train
    log.info("reading %s (%s); fitting features=%s on train", data, fmt, pipeline.name)

    with spark_errors(data, dataset):
        pipeline.fit(train)
        stages["fit"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        processed = _transform_splits(pipeline, frames, keep)
        staging = tmp / "staging"  # not "_staging": Spark skips paths starting with _
        processed.write.partitionBy(SPLIT_COLUMN).parquet(str(staging))
        features = list(pipeline.outputs)
        rows = {
            name: 0 if name in absent else _finish_split(staging, tmp / name, features)
            for name in SPLITS
        }
        for name in SPLITS:
            source = {"carved": " (carved from train)", "absent": " (absent: split.absent)"}
            source = source.get(inputs.sources[name], "")
            log.info("  %s: %s rows%s", name, f"{rows[name]:,}", source)
        if "test" in carved and rows["test"] == 0:
            raise FeatureError(_no_test_rows(split, train_part.path))
        stages["transform_write"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()

        pipeline.save(tmp / PIPELINE_DIR)
        spec = pipeline.feature_spec(vocabulary_dir=f"{PIPELINE_DIR}/vocabularies")
        spec.save(tmp)
        table_rows = {}
        tables = table_specs(pipeline, spec) if cfg.tables else []
        if tables:
            written = spark.read.parquet(str(staging))
            latest_rows(written, tables, time_column).write.partitionBy(TABLE_COLUMN).parquet(
                str(tmp / "_tables")
            )
            for table in tables:
                rows_written = finish_table(tmp / "_tables", tmp / table.directory, table)
                table_rows[table.directory] = rows_written
            shutil.rmtree(tmp / "_tables")
        shutil.rmtree(staging)
        shutil.rmtree(tmp / RANKED_DIR, ignore_errors=True)
        stages["tables"] = round(time.perf_counter() - t, 2)
    return PreprocessSummary(
        out="",
        features=pipeline.name,
        data=data,
        rows=rows,
        tables=table_rows,
        stages=stages,
        shuffle_partitions=partitions,
        sources=dict(inputs.sources),
    )


def _hashed_content(
    spark: SparkSession, df: DataFrame, part: PartInfo, dataset: Any, seed: int
) -> DataFrame:
    """The train part with `CONTENT_COLUMN`, a hash over every column the dataset declares
    (those the part has), so the random carve does not depend on which columns the feature
    set reads: the pipeline's ranker and two-tower features split the same rows alike."""
    declared = list(dataset.get("columns") or {})
    if part.schema is not None:  # a parquet read limited to the feature set's columns
        df = read_part(spark, part.path, dataset)
    columns = [c for c in declared if c in df.columns] or list(df.columns)
    return with_content_hash(df, columns, seed)


def _no_test_rows(split: DictConfig, train_path: str) -> str:
    """Why a carved test part came out empty, and what to change (training would fail on it
    only after its last epoch)."""
    why = (
        f"no user has {MIN_KEPT + 1} or more rows with a time (each keeps {MIN_KEPT} in train)"
        if split.method == "per_user_time"
        else "train has too few rows"
    )
    return (
        f"split.method={split.method} carved no test rows from {train_path} with "
        f"split.test_fraction={split.test_fraction}: {why}; raise split.test_fraction, use "
        "more data or give the input a test/ part"
    )


def _transform_splits(
    pipeline: FeaturePipeline, frames: dict[str, DataFrame], keep: list[str]
) -> DataFrame:
    """All splits processed in one plan, tagged by `SPLIT_COLUMN` (train with its own
    transforms when the pipeline has any: out-of-fold means, sampled negatives)."""
    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F

    present = [name for name in SPLITS if frames.get(name) is not None]  # not split.absent
    tagged = {name: frames[name].withColumn(SPLIT_COLUMN, F.lit(name)) for name in present}
    held = [tagged[name] for name in present if name != "train"]  # valid is never absent
    keep = [*keep, SPLIT_COLUMN]
    if pipeline.train_specific:
        train = pipeline.transform(tagged["train"], keep=keep, train=True)
        rest = pipeline.transform(reduce(DataFrame.unionByName, held), keep=keep)
        return train.unionByName(rest)
    everything = reduce(DataFrame.unionByName, [tagged["train"], *held])
    return pipeline.transform(everything, keep=keep)


def _finish_split(staging: Path, target: Path, features: list[str]) -> int:
    """Move one split out of Spark's `<col>=<split>` staging directory, keeping only the
    feature columns (pyarrow, file by file); return its row count.

    The staging copy keeps the time column for the feature tables; the processed data holds
    features only. An empty split gets one empty file with the schema.
    """
    name = target.name
    source = staging / f"{SPLIT_COLUMN}={name}"
    target.mkdir()
    files = sorted(source.glob("*.parquet")) if source.is_dir() else []
    rows = 0
    for file in files:
        # without Spark's schema metadata, which still lists the dropped columns
        table = pq.read_table(file, columns=features).replace_schema_metadata(None)
        pq.write_table(table, target / file.name)
        rows += table.num_rows
    if not files:
        schema = pq.read_schema(next(staging.glob("*/*.parquet")))
        empty = schema.empty_table().select(features)
        pq.write_table(empty, target / "part-00000.parquet")
    return rows


def format_summary(summary: PreprocessSummary) -> str:
    rows = ", ".join(f"{k} {v:,}" for k, v in summary.rows.items())
    tables = ", ".join(f"{k} {v:,}" for k, v in summary.tables.items())
    lines = [
        f"preprocessed {summary.data} with features={summary.features} "
        f"in {summary.seconds:.1f} s -> {summary.out}",
        f"  rows: {rows}",
    ]
    said = {"carved": "carved from train", "absent": "absent (split.absent, no directory)"}
    other = [f"{k} {said[v]}" for k, v in summary.sources.items() if v in said]
    if other:
        lines.append(f"  splits: {', '.join(other)}")
    if tables:
        lines.append(f"  tables: {tables}")
    lines.append(
        f"  files: {summary.out}/{{train,valid,test}}/, feature_spec.json, pipeline/, "
        f"{SUMMARY_FILE}"
    )
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="preprocess")
def main(cfg: DictConfig) -> None:
    run_task(preprocess, cfg, check=check_preprocess)


if __name__ == "__main__":
    main()
