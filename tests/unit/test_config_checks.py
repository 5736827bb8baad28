"""Out-of-range config values are refused by the entry points' check hooks, before any work,
with one line naming the key, the value and the allowed range (recsys/config/checks.py)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from recsys.config import CONF_DIR, register_configs
from recsys.config.checks import ConfigValueError, check_ranges, config_problems
from recsys.errors import RecsysError
from recsys.features.columns import FeatureError
from recsys.pipeline import PipelineError, check_pipeline
from recsys.preprocess import check_preprocess
from recsys.train.run import TrainConfigError, check_train_config

register_configs()
CONF = Path(CONF_DIR)


def _compose(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.embedding_dim=0"], "model.embedding_dim must be >= 1, got 0"),
        (["model=deepfm", "model.embedding_dim=-4"], "model.embedding_dim must be >= 1, got -4"),
        (["+model.embedding_dims.tweet_id=0"], "model.embedding_dims.tweet_id must be >= 1, got 0"),
        (["model.hidden_units=[64,0]"], "model.hidden_units must list sizes >= 1, got [64, 0]"),
        (["model=deepfm", "model.hidden_units=[-1]"], "model.hidden_units must list sizes >= 1"),
        (["model=two_tower", "model.tower_units=[]"], "model.tower_units must list at least one"),
        (["model=two_tower", "model.tower_units=[8,0]"], "model.tower_units must list sizes >= 1"),
        (["model.dropout=1.0"], "model.dropout must be in [0, 1), got 1.0"),
        (["model.dropout=-0.1"], "model.dropout must be in [0, 1), got -0.1"),
        (["model=two_tower", "model.temperature=0"], "model.temperature must be > 0, got 0.0"),
        (["model=logistic", "model.embedding_l2=-1"], "model.embedding_l2 must be >= 0, got -1.0"),
        (["trainer.epochs=0"], "trainer.epochs must be >= 1, got 0"),
        (["trainer.batch_size=0"], "trainer.batch_size must be >= 1, got 0"),
        (["trainer.eval_batch_size=-1"], "trainer.eval_batch_size must be >= 1, got -1"),
        (["trainer.retrieval_k=0"], "trainer.retrieval_k must be >= 1, got 0"),
        (["trainer.max_steps_per_epoch=0"], "trainer.max_steps_per_epoch must be >= 1, got 0"),
        (["trainer.lr=0"], "trainer.lr must be > 0, got 0.0"),
        (["trainer.lr=-0.01"], "trainer.lr must be > 0, got -0.01"),
        (["trainer.lr=nan"], "trainer.lr must be > 0, got nan"),
        (["trainer.weight_decay=-1"], "trainer.weight_decay must be >= 0, got -1.0"),
        (["trainer.patience=-1"], "trainer.patience must be >= 0, got -1"),
        (["backend.num_workers=0"], "backend.num_workers must be >= 1, got 0"),
        (["backend.cpus_per_worker=0"], "backend.cpus_per_worker must be >= 1, got 0"),
        (["backend=ray", "backend.max_failures=-2"], "backend.max_failures must be >= -1, got -2"),
    ],
)
def test_train_refuses_a_value_out_of_range_naming_key_value_and_range(
    overrides: list[str], message: str
) -> None:
    cfg = _compose("train", ["data=/nonexistent/processed", *overrides])
    with pytest.raises(TrainConfigError) as err:
        check_train_config(cfg)
    # the range is checked first: the missing data directory is not what is reported
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["spark.cores=0"], "spark.cores must be >= 1, got 0"),
        (["spark.shuffle_partitions=-2"], "spark.shuffle_partitions must be >= 1, got -2"),
        (["spark.log_level=LOUD"], "spark.log_level must be one of ALL, DEBUG, ERROR"),
        (["dataset=table", "dataset.sep=''"], "dataset.sep must be one or more characters"),
        (["dataset=table", "dataset.format=json"], "dataset.format must be one of parquet, csv"),
    ],
)
def test_preprocess_refuses_a_value_out_of_range(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    cfg = _compose("preprocess", [f"data={tmp_path}", f"out={tmp_path / 'out'}", *overrides])
    with pytest.raises(FeatureError, match=message.replace("[", r"\[").replace(".", r"\.")):
        check_preprocess(cfg)


def test_the_pipeline_refuses_a_bad_model_before_any_stage() -> None:
    cfg = _compose("pipeline", ["model.embedding_dim=0", "trainer.lr=0"])
    with pytest.raises(PipelineError) as err:
        check_pipeline(cfg)
    # every bad value at once, on one line
    assert str(err.value) == (
        "model.embedding_dim must be >= 1, got 0; trainer.lr must be > 0, got 0.0"
    )


def test_the_error_is_a_recsys_error_by_default() -> None:
    cfg = _compose("train", ["model.embedding_dim=0"])
    with pytest.raises(ConfigValueError) as err:
        check_ranges(cfg)
    assert isinstance(err.value, RecsysError)


def test_the_limits_themselves_are_accepted() -> None:
    cfg = _compose(
        "train",
        ["model.embedding_dim=1", "model.hidden_units=[]", "model.dropout=0.0",
         "trainer.epochs=1", "trainer.lr=1e-9", "trainer.patience=0", "trainer.weight_decay=0",
         "backend=ray", "backend.max_failures=-1", "backend.num_workers=1"],
    )  # fmt: skip
    assert config_problems(cfg) == []


@pytest.mark.parametrize(
    ("primary", "group", "option"),
    [
        *[("train", g, o) for g in ("model", "backend", "trainer") for o in _options(g)],
        *[("train", "experiment", o) for o in _options("experiment")],
        *[("pipeline", g, o) for g in ("model", "backend", "trainer") for o in _options(g)],
        *[("preprocess", "dataset", o) for o in _options("dataset")],
        *[("generate", "dataset", o) for o in _options("dataset")],
    ],
)
def test_every_shipped_option_passes(primary: str, group: str, option: str) -> None:
    cfg = _compose(primary, [f"{group}={option}"])
    assert config_problems(cfg) == []


# ------------------------------------------------------------- feature step order

RATINGS = ["dataset=table", "features=ratings"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["~features.steps.label"],
            r"step 'negatives' \(negative_sample\) needs its label column 'label' from an "
            r"earlier step \(op: label\) or the dataset",
        ),
        (
            ["+features.steps.relabel={op: label, columns: [rating], threshold: 2.5}"],
            r"step 'relabel' \(label\) rewrites 'label' after step 'negatives' "
            r"\(negative_sample\).*put it before",
        ),
        (
            ["features.steps.negatives.item_columns=[item_count]"],
            r"output 'genres' \(entity item\) is not taken from the sampled item by step "
            r"'negatives' \(negative_sample\): list it",
        ),
    ],
)  # fmt: skip
def test_a_step_order_that_cannot_work_is_refused_naming_the_step(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    cfg = _compose(
        "preprocess", [*RATINGS, f"data={tmp_path}", f"out={tmp_path / 'out'}", *overrides]
    )
    with pytest.raises(FeatureError, match=message):
        check_preprocess(cfg)


def test_the_shipped_ratings_steps_pass_the_order_checks(tmp_path: Path) -> None:
    cfg = _compose("preprocess", [*RATINGS, f"data={tmp_path}", f"out={tmp_path / 'out'}"])
    check_preprocess(cfg)
