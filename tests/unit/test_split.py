"""The split rules without Spark: how many of a user's rows `per_user_time` holds out, and the
split settings refused before any work (recsys/features/split.py, recsys/preprocess.py)."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from recsys.config import CONF_DIR, register_configs
from recsys.features.columns import FeatureError
from recsys.features.split import held_out, part_sources, user_split_sizes
from recsys.preprocess import build_pipeline, check_preprocess, inspect_inputs

register_configs()
RATINGS = ["dataset=table", "features=ratings"]


def _compose(overrides: list[str], tmp_path: Path) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            config_name="preprocess",
            overrides=[f"data={tmp_path}", f"out={tmp_path / 'out'}", *overrides],
        )


@pytest.mark.parametrize(
    ("n", "valid_fraction", "test_fraction", "sizes"),
    [
        (0, 0.1, 0.1, (0, 0, 0)),
        (1, 0.1, 0.1, (1, 0, 0)),
        (2, 0.5, 0.5, (2, 0, 0)),  # a user with 2 rows keeps both
        (3, 0.1, 0.1, (2, 0, 1)),  # 3 rows: one to test, the 2 left are too few for valid
        (4, 0.1, 0.1, (2, 1, 1)),
        (5, 0.25, 0.2, (3, 1, 1)),  # 5 * 0.2 = 1 exactly; valid: 4 * 0.25 = 1
        (10, 0.2, 0.2, (6, 2, 2)),  # valid's share is of the 8 rows test left: ceil(1.6)
        (10, 0.0, 0.3, (7, 0, 3)),
        (10, 0.1, 0.0, (9, 1, 0)),  # the input has its own test/: valid only
        (20, 0.1, 0.1, (16, 2, 2)),
        (7, 0.45, 0.5, (2, 1, 4)),  # capped: every user keeps 2 rows in train
    ],
)
def test_per_user_sizes_round_up_and_keep_two_rows_in_train(
    n: int, valid_fraction: float, test_fraction: float, sizes: tuple[int, int, int]
) -> None:
    assert user_split_sizes(n, valid_fraction, test_fraction) == sizes


def test_held_out_is_not_fooled_by_floating_point() -> None:
    # 100 * 0.07 = 7.000000000000001 in floating point: a bare ceil would hold out 8
    assert 100 * 0.07 > 7
    assert held_out(100, 0.07) == 7
    assert held_out(100, 0.14) == 14  # 14.000000000000002
    assert held_out(100, 0.0701) == 8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            [*RATINGS, "split.method=per_user_time", "dataset.time_column=null"],
            r"^split\.method=per_user_time needs a time column: set split\.time_column "
            r"\(dataset=table has no time_column\)$",
        ),
        (
            [*RATINGS, "split.method=time", "dataset.time_column=null"],
            r"^split\.method=time needs a time column",
        ),
        (
            [*RATINGS, "split.method=per_user_time", "features.user_id=null"],
            r"^split\.method=per_user_time needs a user id column: set split\.user_column "
            r"\(features=ratings names no user_id\)$",
        ),
        (
            [*RATINGS, "split.method=per_user_time", "split.user_column=uid"],
            r"^split\.user_column 'uid' is not a column of dataset=table$",
        ),
        (
            [*RATINGS, "split.method=per_user_time", "split.time_column=genres"],
            r"^split\.time_column 'genres' must be int64 or float64, dataset=table declares it "
            r"string$",
        ),
        (
            [*RATINGS, "split.method=per_user_time", "dataset.time_column=stamp"],
            r"^dataset\.time_column 'stamp' is not a column of dataset=table$",
        ),
        (["split.method=per_user"], r"^split\.method must be one of random, time, per_user_time"),
    ],
)  # fmt: skip
def test_a_split_that_cannot_work_is_refused_before_spark_naming_the_key(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(FeatureError, match=message):
        check_preprocess(_compose(overrides, tmp_path))


@pytest.mark.parametrize(
    "overrides",
    [
        [*RATINGS, "split.method=per_user_time"],
        ["features=recsys2021_wnd", "split.method=per_user_time"],
        ["features=recsys2021_two_tower", "split.method=per_user_time"],
        [*RATINGS, "split.method=per_user_time", "split.user_column=item_id"],
    ],
)
def test_the_shipped_configs_take_per_user_time(overrides: list[str], tmp_path: Path) -> None:
    check_preprocess(_compose(overrides, tmp_path))


def _ratings(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"user_id": ["u1"], "item_id": ["m1"], "rating": [4.0],
                      "timestamp": pa.array([1], pa.int64()), "genres": ["Drama"]})  # fmt: skip
    pq.write_table(table, path)


def test_no_test_part_and_no_test_fraction_is_refused_naming_both(tmp_path: Path) -> None:
    data = tmp_path / "ratings.parquet"
    _ratings(data)
    cfg = _compose([*RATINGS, "dataset.format=parquet", f"data={data}", "split.test_fraction=0"],
                   tmp_path)  # fmt: skip
    check_preprocess(cfg)  # the config alone is fine: the input decides
    with pytest.raises(FeatureError, match=(
        rf"^the input data={data} has no test/ part and split\.test_fraction=0: nothing would "
        r"be tested; set split\.test_fraction > 0")):  # fmt: skip
        inspect_inputs(cfg, build_pipeline(cfg))


def test_an_input_with_its_own_test_part_needs_no_test_fraction(tmp_path: Path) -> None:
    data = tmp_path / "raw"
    _ratings(data / "train" / "part-0.parquet")
    _ratings(data / "test" / "part-0.parquet")
    cfg = _compose([*RATINGS, "dataset.format=parquet", f"data={data}", "split.test_fraction=0",
                    "split.method=per_user_time"], tmp_path)  # fmt: skip
    inputs = inspect_inputs(cfg, build_pipeline(cfg))
    assert inputs.parts["test"] is not None and inputs.parts["valid"] is None
    assert (inputs.time_column, inputs.user_column) == ("timestamp", "user_id")
    assert {"timestamp", "user_id"} <= set(inputs.needed)


@pytest.mark.parametrize(
    ("split", "has", "sources"),
    [
        ({}, {"valid": False, "test": True}, ["input", "carved", "input"]),  # the generator's
        ({}, {"valid": False, "test": False}, ["input", "carved", "carved"]),  # one table
        ({}, {"valid": True, "test": True}, ["input", "input", "input"]),
        ({"absent": ["test"]}, {"valid": False, "test": False}, ["input", "carved", "absent"]),
        # absent on purpose: test_fraction is not used, even at 0
        ({"absent": ["test"], "test_fraction": 0}, {"test": False}, ["input", "carved", "absent"]),
        ({"absent": ["test"]}, {"valid": True, "test": False}, ["input", "input", "absent"]),
    ],
)
def test_where_each_split_comes_from(split: dict, has: dict, sources: list[str]) -> None:
    assert list(part_sources({"test_fraction": 0.1, **split}, has, "d").values()) == sources


@pytest.mark.parametrize(
    ("split", "has", "message"),
    [
        ({"test_fraction": 0}, {"test": False},
         r"^the input data=d has no test/ part and split\.test_fraction=0: nothing would be "
         r"tested; .* or declare it absent on purpose with split\.absent=\[test\]$"),
        ({"absent": ["test"]}, {"test": True},
         r"^split\.absent lists test but the input data=d has a test/ part"),
        ({"absent": ["valid"]}, {}, r"^split\.absent lists 'valid'; only test may be absent"),
        ({"absent": ["tests"]}, {}, r"^split\.absent lists 'tests', which is not a split"),
    ],
)  # fmt: skip
def test_a_split_that_cannot_be_had_is_refused_naming_the_key(
    split: dict, has: dict, message: str
) -> None:
    with pytest.raises(FeatureError, match=message):
        part_sources({"test_fraction": 0.1, **split}, has, "d")


def test_an_absent_test_is_declared_in_the_config_and_not_read(tmp_path: Path) -> None:
    data = tmp_path / "ratings.parquet"
    _ratings(data)
    cfg = _compose([*RATINGS, "dataset.format=parquet", f"data={data}", "split.test_fraction=0",
                    "split.absent=[test]"], tmp_path)  # fmt: skip
    inputs = inspect_inputs(cfg, build_pipeline(cfg))
    assert inputs.sources == {"train": "input", "valid": "carved", "test": "absent"}
    assert inputs.parts["test"] is None
