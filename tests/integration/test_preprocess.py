"""`recsys.preprocess` end to end: layout, FeatureSpec, column contract, tables, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.criteo_format import SAMPLE_ROWS, SAMPLE_SEED
from recsys.data.criteo_format import write as write_criteo
from recsys.features.columns import ColumnTypeError, FeatureError, MissingColumnError
from recsys.features.feature_spec import FeatureSpec
from recsys.features.pipeline import FeaturePipeline
from recsys.features.source import check_parquet_files, read_part
from recsys.preprocess import build_pipeline, preprocess
from tests.conftest import CRITEO_SAMPLE, REPO, compose_preprocess

pytestmark = pytest.mark.integration

WIDE = [
    "present_media_language",
    "engaged_with_user_is_verified",
    "enaging_user_is_verified",
    "engagee_follows_engager",
]
DEEP = [
    "present_media", "tweet_type", "language", "engaged_with_user_follower_count",
    "engaged_with_user_following_count", "enaging_user_follower_count",
    "enaging_user_following_count", "engaged_with_user_id", "enaging_user_id", "hashtags",
    "present_domains", "len_hashtags", "len_domains", "len_links",
]  # fmt: skip


def _run(spark, tmp_path: Path, data: Path, *overrides: str):
    out = tmp_path / "out"
    cfg = compose_preprocess([f"data={data}", f"out={out}", *overrides], tmp_path / "run")
    return preprocess(cfg, spark=spark), out


def _rows(directory: Path) -> list[tuple]:
    """Rows of a parquet directory as sortable tuples (lists become tuples)."""
    table = pq.read_table(directory)
    rows = [tuple(tuple(v) if isinstance(v, list) else v for v in r.values())
            for r in table.to_pylist()]  # fmt: skip
    return sorted(rows)


@pytest.fixture(scope="module")
def wnd_out(spark, recsys_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    summary, out = _run(spark, tmp_path_factory.mktemp("wnd"), recsys_raw)
    assert summary.rows["train"] > 0
    return out


def test_a_known_schema_reads_what_spark_would_infer(spark, recsys_raw: Path) -> None:
    needed = ["hashtags", "tweet_timestamp", "enaging_user_is_verified", "like_timestamp"]
    rows, schema = check_parquet_files(str(recsys_raw / "train"), {}, needed)
    assert schema is not None
    given = read_part(spark, str(recsys_raw / "train"), {}, schema)
    inferred = read_part(spark, str(recsys_raw / "train"), {}).select(*needed)
    assert given.schema == inferred.schema
    assert sorted(map(repr, given.collect())) == sorted(map(repr, inferred.collect()))
    assert given.count() == rows


def test_wnd_writes_the_complete_layout(wnd_out: Path, recsys_raw: Path) -> None:
    assert sorted(p.name for p in wnd_out.iterdir()) == [
        "_preprocess.json", "feature_spec.json", "item_features", "pipeline", "test", "train",
        "user_features", "valid",
    ]  # fmt: skip
    assert not list(wnd_out.parent.glob(".*tmp-*"))
    assert sorted(p.name for p in (wnd_out / "pipeline").iterdir()) == [
        "pipeline.json", "vocabularies",
    ]  # fmt: skip
    assert not list(wnd_out.rglob("*.pkl")) and not list(wnd_out.rglob("*.crc"))
    summary = json.loads((wnd_out / "_preprocess.json").read_text())
    raw_train = pq.read_metadata(next((recsys_raw / "train").glob("*.parquet"))).num_rows
    raw_test = pq.read_metadata(next((recsys_raw / "test").glob("*.parquet"))).num_rows
    assert summary["rows"]["train"] + summary["rows"]["valid"] == raw_train
    assert summary["rows"]["test"] == raw_test
    assert 0.05 < summary["rows"]["valid"] / raw_train < 0.15


def test_wnd_feature_spec_marks_wide_deep_label_and_ids(wnd_out: Path) -> None:
    spec = FeatureSpec.load(wnd_out)
    assert [f.name for f in spec.for_input("wide")] == WIDE
    assert [f.name for f in spec.for_input("deep")] == DEEP
    assert (spec.label, spec.user_id, spec.item_id) == ("label", "enaging_user_id", "tweet_id")
    assert spec["label"].kind == "label"
    cross = spec["present_media_language"]
    assert (cross.kind, cross.size, cross.source) == ("cross", 600, ["present_media", "language"])
    assert spec["present_media"].size == 14 and spec["tweet_type"].size == 5
    assert spec["engaged_with_user_follower_count"].size == 9  # missing + 8 bins
    hashtags = spec["hashtags"]
    assert (hashtags.kind, hashtags.max_len, hashtags.pooling) == ("multi_categorical", 4, "mean")
    assert spec["len_hashtags"].kind == "continuous"
    assert set(spec["len_hashtags"].stats) == {"min", "max", "clip"}
    users = spec["enaging_user_id"], spec["engaged_with_user_id"]
    assert (
        users[0].vocabulary == users[1].vocabulary == "pipeline/vocabularies/users.shared.parquet"
    )
    assert users[0].size == users[1].size
    for feature in spec.features:
        if feature.vocabulary:
            assert (wnd_out / feature.vocabulary).is_file()
    assert {f.entity for f in spec.of_entity("user")} == {"user"}
    assert [f.name for f in spec.of_entity("context")] == ["engagee_follows_engager"]


def test_processed_columns_follow_the_spec_contract(wnd_out: Path) -> None:
    spec = FeatureSpec.load(wnd_out)
    for split in ("train", "valid", "test"):
        table = pq.read_table(wnd_out / split)
        assert table.column_names == spec.names
        for f in spec.features:
            column = table[f.name].combine_chunks()
            assert column.null_count == 0, f.name
            if f.kind in ("continuous", "label"):
                assert column.type == pa.float32(), f.name
            elif f.kind == "multi_categorical":
                assert pa.types.is_list(column.type) and column.type.value_type == pa.int64()
                assert set(pc_list_lengths(column)) == {f.max_len}
                values = column.flatten().to_numpy()
                assert values.min() >= 0 and values.max() < f.size, f.name
            else:
                assert column.type == pa.int64(), f.name
                values = column.to_numpy()
                assert values.min() >= 0 and values.max() < f.size, f.name
        labels = table["label"].to_numpy()
        assert set(np.unique(labels)) <= {0.0, 1.0} and 0.2 < labels.mean() < 0.8


def pc_list_lengths(column: pa.Array) -> list[int]:
    import pyarrow.compute as pc

    return pc.list_value_length(column).to_pylist()


def test_the_saved_pipeline_reproduces_the_test_split_online(wnd_out: Path, recsys_raw) -> None:
    pipeline = FeaturePipeline.load(wnd_out / "pipeline")
    raw_test = pq.read_table(recsys_raw / "test")
    assert _rows(wnd_out / "test") == sorted(
        tuple(tuple(v) if isinstance(v, list) else v for v in r.values())
        for r in pipeline.transform_batch(raw_test).to_pylist()
    )


def test_feature_tables_hold_one_row_per_known_user_and_item(wnd_out: Path) -> None:
    spec = FeatureSpec.load(wnd_out)
    users = pq.read_table(wnd_out / "user_features")
    assert users.column_names == [
        "enaging_user_id", "enaging_user_id_raw", "enaging_user_is_verified",
        "enaging_user_follower_count", "enaging_user_following_count",
    ]  # fmt: skip
    items = pq.read_table(wnd_out / "item_features")
    assert items.column_names[:2] == ["tweet_id", "tweet_id_raw"]
    assert set(items.column_names[2:]) == {f.name for f in spec.of_entity("item")} - {"tweet_id"}
    for table, key in ((users, "enaging_user_id"), (items, "tweet_id")):
        keys = table[key].to_numpy()
        assert len(np.unique(keys)) == len(keys) and keys.min() >= 2
    # the raw id is the one the vocabulary encodes
    vocab = pq.read_table(wnd_out / spec["enaging_user_id"].vocabulary)
    index_of = dict(zip(vocab["value"].to_pylist(), vocab["index"].to_pylist(), strict=True))
    for row in users.slice(0, 50).to_pylist():
        assert index_of[row["enaging_user_id_raw"]] == row["enaging_user_id"]


def test_two_tower_spec_marks_the_towers(spark, recsys_raw: Path, tmp_path: Path) -> None:
    cfg = compose_preprocess(["features=recsys2021_two_tower"], tmp_path)
    pipeline = build_pipeline(cfg)
    pipeline.fit(spark.read.parquet(str(recsys_raw / "train")))
    spec = pipeline.feature_spec()
    user_tower = [f.name for f in spec.for_input("user_tower")]
    item_tower = [f.name for f in spec.for_input("item_tower")]
    assert user_tower == [
        "enaging_user_id", "enaging_user_follower_count", "enaging_user_following_count",
        "enaging_user_is_verified", "user_history", "author_history", "language_history",
    ]  # fmt: skip
    # the histories hold encoded ids of the item-side vocabularies they name
    assert spec["user_history"].kind == "multi_categorical"
    assert spec["user_history"].size == spec["tweet_id"].size
    assert item_tower[:2] == ["tweet_id", "engaged_with_user_id"]
    assert all(spec[n].entity == "user" for n in user_tower)
    assert all(spec[n].entity == "item" for n in item_tower)
    assert (spec.user_id, spec.item_id, spec.label) == ("enaging_user_id", "tweet_id", "label")
    assert not spec.for_input("wide") and not spec.for_input("deep")


def test_criteo_sample_logs_counts_and_encodes_categories(spark, tmp_path: Path) -> None:
    assert CRITEO_SAMPLE.is_file(), f"the Criteo sample is missing: {CRITEO_SAMPLE}"
    summary, out = _run(
        spark, tmp_path, CRITEO_SAMPLE, "dataset=criteo_sample", "features=criteo",
        "features.min_freq=2",
    )  # fmt: skip
    assert sum(summary.rows.values()) == 200
    assert not summary.tables  # no users or items in Criteo
    spec = FeatureSpec.load(out)
    assert [f.name for f in spec.for_input("wide")] == [f"C{i}" for i in range(1, 27)]
    assert len(spec.for_input("deep")) == 39
    train = pq.read_table(out / "train")
    counts = np.stack([train[f"I{i}"].to_numpy() for i in range(1, 14)])
    assert counts.min() >= 0.0 and counts.max() < 15.0  # log1p of counts up to ~1e6
    c1 = spec["C1"]
    assert 2 < c1.size < 20 and train["C1"].to_numpy().max() < c1.size
    assert set(train["label"].to_numpy()) == {0.0, 1.0}


def test_criteo_layout_without_header_reads_as_the_sample(spark, tmp_path: Path) -> None:
    # the sample's rows written in the original layout (tab-separated, no header, integer
    # counts): dataset=criteo must read them into the very rows dataset=criteo_sample gives
    tsv = write_criteo(tmp_path / "criteo.txt", SAMPLE_ROWS, SAMPLE_SEED, layout="criteo")
    assert "\t" in tsv.read_text().splitlines()[0] and not CRITEO_SAMPLE.samefile(tsv)
    outs: dict[str, Path] = {}
    for dataset, data in (("criteo", tsv), ("criteo_sample", CRITEO_SAMPLE)):
        summary, outs[dataset] = _run(
            spark, tmp_path / dataset, data, f"dataset={dataset}", "features=criteo",
            "features.min_freq=2",
        )  # fmt: skip
        assert sum(summary.rows.values()) == SAMPLE_ROWS
    for split in ("train", "valid", "test"):
        assert _rows(outs["criteo"] / split) == _rows(outs["criteo_sample"] / split), split


def test_ratings_table_from_csv_with_negative_sampling(spark, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 600
    csv = tmp_path / "ratings.csv"
    lines = ["user_id,item_id,rating,timestamp,genres"]
    for i in range(n):
        genres = rng.choice(["Comedy", "Drama|Comedy", "Action|Drama|Crime|War", ""])
        lines.append(f"u{rng.integers(40)},m{rng.integers(60)},{rng.integers(1, 6)},{i},{genres}")
    csv.write_text("\n".join(lines) + "\n")
    summary, out = _run(spark, tmp_path, csv, "dataset=table", "features=ratings")
    train = pq.read_table(out / "train")
    labels = train["label"].to_numpy()
    positives, negatives = (labels == 1).sum(), (labels == 0).sum()
    assert negatives == 4 * positives  # k = 4 per positive; the low ratings are dropped
    test = pq.read_table(out / "test")
    assert summary.rows["test"] == test.num_rows and 0.1 < test["label"].to_numpy().mean() < 0.7
    spec = FeatureSpec.load(out)
    assert [f.name for f in spec.for_input("item_tower")] == ["item_id", "genres"]
    assert spec["genres"].max_len == 3


# ------------------------------------------------------------------------ bad input


@pytest.fixture
def raw_copy(recsys_raw: Path, tmp_path: Path):
    """A writable copy of the raw data with a function to replace its train table."""

    def make(train: pa.Table | None = None) -> Path:
        data = tmp_path / "raw"
        for split in ("train", "test"):
            (data / split).mkdir(parents=True)
            table = pq.read_table(recsys_raw / split)
            if split == "train" and train is not None:
                table = train
            pq.write_table(table, data / split / "part-00000.parquet")
        return data

    return make


def _assert_absent(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_a_missing_column_is_named(spark, raw_copy, recsys_raw, tmp_path: Path) -> None:
    data = raw_copy(pq.read_table(recsys_raw / "train").drop(["language"]))
    with pytest.raises(MissingColumnError, match=r"raw/train: missing column 'language'"):
        _run(spark, tmp_path, data)
    _assert_absent(tmp_path / "out")


def test_a_wrong_type_is_named(spark, raw_copy, recsys_raw, tmp_path: Path) -> None:
    train = pq.read_table(recsys_raw / "train")
    i = train.schema.get_field_index("like_timestamp")
    data = raw_copy(train.set_column(i, "like_timestamp", pc_cast_str(train["like_timestamp"])))
    with pytest.raises(ColumnTypeError, match="column 'like_timestamp' has type string"):
        _run(spark, tmp_path, data)
    _assert_absent(tmp_path / "out")


def pc_cast_str(column) -> pa.Array:
    return column.cast(pa.string())


def test_a_bad_value_found_by_spark_is_named(spark, raw_copy, recsys_raw, tmp_path) -> None:
    train = pq.read_table(recsys_raw / "train")
    flags = ["maybe" if i == 7 else str(v).lower() for i, v in
             enumerate(train["enaging_user_is_verified"].to_pylist())]  # fmt: skip
    i = train.schema.get_field_index("enaging_user_is_verified")
    data = raw_copy(train.set_column(i, "enaging_user_is_verified", pa.array(flags)))
    with pytest.raises(
        FeatureError, match="column 'enaging_user_is_verified': value 'maybe' is not true or false"
    ):
        _run(spark, tmp_path, data)
    _assert_absent(tmp_path / "out")


def test_an_empty_input_is_named(spark, raw_copy, recsys_raw, tmp_path: Path) -> None:
    data = raw_copy(pq.read_table(recsys_raw / "train").slice(0, 0))
    with pytest.raises(FeatureError, match=r"raw/train has no rows \(train part is empty\)"):
        _run(spark, tmp_path, data)
    for file in (data / "train").iterdir():
        file.unlink()
    with pytest.raises(FeatureError, match=r"raw/train holds no parquet files"):
        _run(spark, tmp_path, data)
    _assert_absent(tmp_path / "out")


def test_a_corrupt_parquet_file_is_named_and_the_old_output_kept(
    spark, raw_copy, tmp_path: Path
) -> None:
    data = raw_copy()
    out = tmp_path / "out"
    out.mkdir()
    (out / "marker").write_text("an earlier, complete output")
    bad = data / "train" / "part-00001.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(FeatureError, match=r"input file .*part-00001\.parquet is not a readable"):
        _run(spark, tmp_path, data, "overwrite=true")
    assert sorted(p.name for p in out.iterdir()) == ["marker"]
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_cli_writes_output_and_refuses_to_overwrite(recsys_raw: Path, tmp_path: Path) -> None:
    out, cache = tmp_path / "out", tmp_path / "cds"
    args = [sys.executable, "-m", "recsys.preprocess", f"data={recsys_raw}", f"out={out}",
            "features=recsys2021_two_tower", "spark.cores=2", "tables=false",
            "spark.class_cache_write=true", f"spark.class_cache_dir={cache}",
            f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    first = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "preprocessed" in first.stdout + first.stderr
    # the JVM's start-up warnings (Spark 4 adds an incubator module) go to the run's log only
    assert "jdk.incubator.vector" not in first.stdout + first.stderr
    assert "jdk.incubator.vector" in (tmp_path / "run" / "preprocess.log").read_text()
    assert (out / "feature_spec.json").is_file() and not (out / "user_features").exists()
    assert (tmp_path / "run" / "run_info.json").is_file()
    # the first run leaves a whole class archive for the next ones, and nothing half-written
    assert [p.suffix for p in cache.iterdir()] == [".jsa"]
    second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"error: output {out} already exists; pass overwrite=true to replace it"
    ]


def test_a_jvm_that_cannot_start_points_to_its_output(recsys_raw: Path, tmp_path: Path) -> None:
    out, run = tmp_path / "out", tmp_path / "run"
    args = [sys.executable, "-m", "recsys.preprocess", f"data={recsys_raw}", f"out={out}",
            "spark.jvm_options=-Xmx1q", f"hydra.run.dir={run}"]  # fmt: skip
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"the JVM's output is in {run / 'preprocess.log'}" in proc.stderr
    # Spark's launcher refuses the option, and says so in the log, not on the terminal
    assert "Not allowed to specify max heap" in (run / "preprocess.log").read_text()
    assert "Not allowed" not in proc.stderr
    assert not out.exists()
