"""Operations on Arrow (the online path) with hand-computed outputs, and config checks.

The Spark path of every operation, and its equality with this one, is tested in
tests/integration/test_feature_ops_spark.py and test_online_offline.py.
"""

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from recsys.features.columns import ColumnTypeError, FeatureError, MissingColumnError
from recsys.features.ops import build_op
from recsys.features.pipeline import FeaturePipeline
from recsys.features.vocabulary import Vocabulary
from tests.conftest import compose_preprocess


def _run(config: dict, table: pa.Table, state: dict | None = None, vocabs=None) -> pa.Table:
    op = build_op("step", config)
    op.check_arrow(table)
    if op.stateful:
        op.load_state(state or {}, vocabs or {})
    return op.transform_arrow(table)


def test_map_fill_cast_truncate_length_bins_label() -> None:
    t = pa.table(
        {
            "media": ["Photo", "Video", None, "", "GIF"],
            "lists": ["Photo\tVideo\tGIF", "a", None, "", "x\t"],
            "n": pa.array([None, 0, 1, 99, 100], pa.int64()),
            "x": [1.9, -1.9, None, 3.0, float("nan")],
            "flag": [True, False, None, True, False],
        }
    )
    got = _run({"op": "map", "columns": ["media"], "values": ["GIF", "Photo"]}, t)
    assert got["media"].to_pylist() == [3, 1, 0, 0, 2]
    got = _run({"op": "truncate_list", "columns": ["lists"], "keep": 2, "join": "_"}, t)
    assert got["lists"].to_pylist() == ["Photo_Video", "a", None, "", "x_"]
    got = _run({"op": "list_length", "columns": ["lists"]}, t)
    assert got["lists_len"].to_pylist() == [3, 1, 0, 0, 2]
    got = _run({"op": "bins", "columns": ["n"], "edges": [1, 100]}, t)
    assert got["n"].to_pylist() == [0, 1, 2, 2, 3]
    got = _run({"op": "fill", "columns": ["n"], "value": -1}, t)
    assert got["n"].to_pylist() == [-1, 0, 1, 99, 100]
    got = _run({"op": "cast", "columns": ["x", "flag"], "to": "int64"}, t)
    assert got["x"].to_pylist() == [1, -1, None, 3, None]
    assert got["flag"].to_pylist() == [1, 0, None, 1, 0]
    got = _run({"op": "label", "columns": ["n", "x"], "threshold": 0.0, "out": "y"}, t)
    assert got["y"].to_pylist() == [1.0, 0.0, 1.0, 1.0, 1.0]


def test_minmax_log_with_fitted_state() -> None:
    t = pa.table({"x": [2.0, 4.0, 10.0, -5.0, None]})
    got = _run({"op": "minmax", "columns": ["x"]}, t, state={"stats": {"x": {"min": 2, "max": 6}}})
    assert got["x"].to_pylist() == [0.0, 0.5, 1.0, 0.0, 0.0]
    got = _run(
        {"op": "minmax", "columns": ["x"], "clip": False},
        t,
        state={"stats": {"x": {"min": 2, "max": 6}}},
    )
    assert got["x"].to_pylist() == [0.0, 0.5, 2.0, -1.75, 0.0]
    got = _run({"op": "log", "columns": ["x"]}, pa.table({"x": [0.0, math.e - 1, -3.0, None]}))
    assert got["x"].to_pylist() == pytest.approx([0.0, 1.0, 0.0, 0.0])


def test_category_count_target_with_loaded_state() -> None:
    vocab = Vocabulary(pa.array(["b", "a"]), np.array([3, 2]))
    t = pa.table({"c": ["a", "b", "new", None], "tags": ["a\tnew\tb", None, "b", ""]})
    got = _run({"op": "category", "columns": ["c"]}, t, vocabs={"c": vocab})
    assert got["c"].to_pylist() == [3, 2, 1, 0]
    got = _run(
        {"op": "category", "columns": ["tags"], "split": "\t", "max_len": 2},
        t,
        vocabs={"tags": vocab},
    )
    assert got["tags"].to_pylist() == [[3, 1], [0, 0], [2, 0], [0, 0]]
    got = _run({"op": "count", "columns": ["c"]}, t, vocabs={"c": vocab})
    assert got["c_count"].to_pylist() == [2.0, 3.0, 0.0, 0.0]
    # (sum + prior * m) / (count + m) with prior 0.5, m 2: b -> (3 + 1) / 5, a -> (0 + 1) / 4
    got = _run(
        {"op": "target", "columns": ["c"], "target": "y", "smoothing": 2.0},
        t.append_column("y", pa.array([0.0, 1.0, 1.0, 0.0])),
        state={"prior": 0.5, "sums": {"c": [3.0, 0.0]}},
        vocabs={"c": vocab},
    )
    assert got["c_te"].to_pylist() == pytest.approx([0.25, 0.8, 0.5, 0.5])


def test_hash_and_cross_keep_zero_for_missing() -> None:
    t = pa.table({"a": ["x", None, "", "y"], "b": pa.array([1, 2, 3, None], pa.int64())})
    got = _run({"op": "hash", "columns": ["a"], "buckets": 7, "out": ["h"]}, t)
    assert got["h"].to_pylist()[1:3] == [0, 0]
    assert all(1 <= v < 7 for v in got["h"].to_pylist()[::3])
    got = _run({"op": "cross", "columns": ["a", "b"], "buckets": 50}, t)
    assert got["a_b"].to_pylist()[1:] == [0, 0, 0]
    assert 1 <= got["a_b"].to_pylist()[0] < 50


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"op": "nope", "columns": ["a"]}, "step 'step': op 'nope' is not one of"),
        ({"op": "hash", "columns": ["a"], "bucketz": 5}, "unknown key bucketz"),
        ({"op": "hash", "columns": ["a"], "buckets": 1}, "buckets must be an integer >= 2"),
        ({"op": "category", "columns": ["a"], "split": "\t"}, "needs a non-empty split"),
        ({"op": "bins", "columns": ["a"], "edges": [3, 1]}, "strictly increasing"),
        ({"op": "cross", "columns": ["a"]}, "at least two"),
        ({"op": "map", "columns": ["a"], "values": ["", "x"]}, "empty string"),
    ],
)
def test_a_bad_step_config_names_the_step_and_key(config: dict, fragment: str) -> None:
    with pytest.raises(FeatureError, match=fragment):
        build_op("step", config)


def test_an_input_of_the_wrong_type_names_step_and_column() -> None:
    op = build_op("scale", {"op": "minmax", "columns": ["name"]})
    with pytest.raises(ColumnTypeError, match=r"step 'scale' .*column 'name' is string"):
        op.check_arrow(pa.table({"name": ["a"]}))
    with pytest.raises(MissingColumnError, match="missing column 'name'"):
        op.check_arrow(pa.table({"other": [1]}))


RAW = {"u": "string", "n": "int64", "y": "int64"}


def _pipeline(steps: dict, outputs: dict, **roles) -> FeaturePipeline:
    cfg = {"name": "t", "steps": steps, "outputs": outputs, **roles}
    return FeaturePipeline.from_config(cfg, RAW)


def test_pipeline_config_errors_come_before_any_data() -> None:
    with pytest.raises(MissingColumnError, match=r"step 's' .*reads column 'v'"):
        _pipeline({"s": {"op": "hash", "columns": ["v"]}}, {"u": {"entity": "user"}})
    with pytest.raises(MissingColumnError, match="output 'zz' is neither"):
        _pipeline({}, {"zz": {"entity": "user"}})
    with pytest.raises(FeatureError, match=r"outputs\.u\.entity 'person'"):
        _pipeline({}, {"u": {"entity": "person"}})
    with pytest.raises(FeatureError, match="label 'y2' is not one of the outputs"):
        _pipeline({}, {"n": {"entity": "user"}}, label="y2")
    with pytest.raises(FeatureError, match="not fitted"):
        _pipeline({"c": {"op": "category", "columns": ["u"]}}, {"u": {"entity": "user"}}).save(
            Path("/nonexistent")
        )


def test_pipeline_needs_only_the_raw_columns_its_steps_read() -> None:
    p = _pipeline(
        {
            "h": {"op": "hash", "columns": ["u"], "buckets": 10},
            "l": {"op": "label", "columns": ["y"]},
        },
        {"u": {"entity": "user"}, "label": {}},
        label="label",
    )
    assert p.raw_columns == {"u": "string", "y": "int64"}
    # serving rows carry no engagement: the label step is skipped, its output left out
    out = p.transform_batch([{"u": "x"}, {"u": None}])
    assert out.column_names == ["u"]
    assert out["u"].type == pa.int64()
    assert out["u"].to_pylist()[1] == 0
    spec = p.feature_spec()
    assert [(f.name, f.kind, f.size) for f in spec.features] == [
        ("u", "hashed", 10),
        ("label", "label", None),
    ]


@pytest.mark.parametrize(
    ("dataset", "features"),
    [
        ("recsys2021", "recsys2021_wnd"),
        ("recsys2021", "recsys2021_wnd_neg"),
        ("recsys2021", "recsys2021_two_tower"),
        ("criteo", "criteo"),
        ("table", "ratings"),
        ("movielens100k", "movielens100k"),
        ("movielens100k", "movielens100k_two_tower"),
    ],
)
def test_every_features_config_builds_its_pipeline(
    dataset: str, features: str, tmp_path: Path
) -> None:
    from recsys.features.side_tables import declared_columns
    from recsys.preprocess import build_pipeline

    cfg = compose_preprocess([f"dataset={dataset}", f"features={features}"], tmp_path)
    pipeline = build_pipeline(cfg)
    assert pipeline.name == features
    assert pipeline.outputs
    assert set(pipeline.raw_columns) <= set(declared_columns(cfg.dataset))


def test_every_features_option_is_covered_above() -> None:
    from recsys.config import CONF_DIR

    options = sorted(p.stem for p in (Path(CONF_DIR) / "features").glob("*.yaml"))
    assert options == [
        "criteo",
        "movielens100k",
        "movielens100k_two_tower",
        "ratings",
        "recsys2021_two_tower",
        "recsys2021_wnd",
        "recsys2021_wnd_neg",
    ]
