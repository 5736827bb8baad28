"""Training building blocks without a full run: config checks, shards, precision, IPEX check,
early stopping."""

import shutil
from pathlib import Path

import pytest
import torch

from recsys.errors import RecsysError
from recsys.train.data import DataError, iter_batches, read_shard
from recsys.train.early_stopping import EarlyStopping
from recsys.train.precision import check_ipex, cpu_flags, resolve_precision
from recsys.train.run import TrainConfigError, check_train_config
from tests.helpers.processed_data import spec, write_processed
from tests.helpers.train_config import train_config


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_processed(tmp_path_factory.mktemp("processed"), rows=3000)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("trainer.batch_size=0", "trainer.batch_size must be >= 1"),
        ("trainer.lr=0", "trainer.lr must be > 0"),
        ("data=/nonexistent/dir", "data directory /nonexistent/dir does not exist"),
    ],
)
def test_bad_config_fails_before_training(
    data: Path, tmp_path: Path, override: str, fragment: str
) -> None:
    cfg = train_config(data, tmp_path, "wide_deep", override)
    with pytest.raises(TrainConfigError, match=fragment):
        check_train_config(cfg)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_spec_that_does_not_match_the_data_fails(data: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    bad = spec()
    bad["user"].size = 50  # the data holds user indices up to 201
    bad.save(broken)
    with pytest.raises(DataError, match=r"'user' holds indices in \[2, 201\].*size is 50"):
        read_shard(broken, "train", bad)
    renamed = spec()
    renamed.features[0].name = "user_idx"
    renamed.user_id = "user_idx"
    renamed.save(broken)
    cfg = train_config(broken, tmp_path / "run", "wide_deep")
    with pytest.raises(TrainConfigError, match=r"lacks columns \['user_idx'\]"):
        check_train_config(cfg)


def test_shards_split_rows_evenly_and_batches_cover_them(data: Path) -> None:
    whole = read_shard(data, "train", spec())
    parts = [read_shard(data, "train", spec(), rank, 3) for rank in range(3)]
    per = whole.num_rows // 3
    assert [p.num_rows for p in parts] == [per] * 3
    joined = torch.cat([p.tensors["item"] for p in parts])
    assert torch.equal(joined, whole.tensors["item"][: 3 * per])
    assert whole.tensors["tags"].shape == (whole.num_rows, 3)
    seen = torch.cat([b["item"] for b in iter_batches(parts[0], 100, shuffle=True, seed=3)])
    assert sorted(seen.tolist()) == sorted(parts[0].tensors["item"].tolist())
    again = torch.cat([b["item"] for b in iter_batches(parts[0], 100, shuffle=True, seed=3)])
    assert torch.equal(seen, again)
    other_epoch = torch.cat(
        [b["item"] for b in iter_batches(parts[0], 100, shuffle=True, seed=3, epoch=1)]
    )
    assert not torch.equal(seen, other_epoch)


def test_auto_precision_needs_amx() -> None:
    assert resolve_precision("auto", {"avx512_bf16", "avx512f"})[0] == "fp32"
    assert resolve_precision("auto", {"amx_bf16", "avx512_bf16"})[0] == "bf16"
    assert resolve_precision("bf16", set())[0] == "bf16"
    if "amx_bf16" not in cpu_flags():
        assert resolve_precision("auto")[0] == "fp32"


def test_ipex_without_a_matching_build_names_the_versions() -> None:
    with pytest.raises(RecsysError, match=r"torch 2\.13") as err:
        check_ipex()
    assert "2.8" in str(err.value)


def test_early_stopping_counts_epochs_without_gain() -> None:
    stopper = EarlyStopping("val/auc", "max", patience=2)
    assert stopper.update(0, {"val/auc": 0.6})
    assert not stopper.update(1, {"val/auc": 0.59})
    assert not stopper.should_stop
    assert not stopper.update(2, {"val/auc": 0.6})
    assert stopper.should_stop and stopper.best_epoch == 0
    with pytest.raises(KeyError, match="val/recall@10"):
        EarlyStopping("val/recall@10").update(0, {"val/auc": 0.5})


def test_a_last_batch_of_one_row_can_be_skipped(data: Path) -> None:
    shard = read_shard(data, "train", spec())
    size = shard.num_rows - 1  # leaves exactly one row for the last batch
    sizes = [len(b["item"]) for b in iter_batches(shard, size)]
    assert sizes == [size, 1]
    assert [len(b["item"]) for b in iter_batches(shard, size, min_rows=2)] == [size]


def test_shared_workers_restore_only_their_own_trainings_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trainings sharing a Ray worker group see Ray's latest checkpoint, whoever wrote it."""
    import json
    from types import SimpleNamespace

    import ray.train

    from recsys.train.loop import RayContext

    checkpoint_dir = tmp_path / "checkpoint"
    checkpoint_dir.mkdir()
    (checkpoint_dir / "state.json").write_text(json.dumps({"epoch": 0, "job": "0:/runs/a"}))
    context = SimpleNamespace(get_world_rank=lambda: 0, get_world_size=lambda: 2)
    monkeypatch.setattr(ray.train, "get_context", lambda: context)
    monkeypatch.setattr(
        ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(checkpoint_dir)
    )

    def restored(job: str | None) -> Path | None:
        with RayContext(job).restored_checkpoint() as path:
            return path

    assert restored("0:/runs/a") == checkpoint_dir
    assert restored("1:/runs/b") is None  # the other training's checkpoint: start afresh
    assert restored(None) == checkpoint_dir  # one training per worker group: always its own


def test_trainings_share_workers_only_with_the_same_ray_settings(data: Path) -> None:
    from recsys.train.run import can_share_workers

    def cfg(*overrides: str):
        return train_config(data, Path("run"), "wide_deep", *overrides)

    ray2 = ("backend=ray", "backend.num_workers=2")
    assert can_share_workers([cfg(*ray2), cfg(*ray2)])
    assert not can_share_workers([cfg(*ray2)])
    assert not can_share_workers([cfg(), cfg()])  # the local backend
    assert not can_share_workers([cfg(*ray2), cfg("backend=ray", "backend.num_workers=1")])
    assert not can_share_workers([cfg(*ray2), cfg(*ray2, "resume=true")])


def test_progress_of_trainings_in_one_worker_group_is_logged_in_their_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import time

    from recsys.train.run import _tail

    first, second = tmp_path / "first.log", tmp_path / "second.log"
    with caplog.at_level(logging.INFO, logger="recsys.train.run"), _tail([first, second], 0.2):
        first.write_text("first: epoch 1\n")
        time.sleep(0.5)
        with first.open("a") as f:  # the test line lands just before the next training starts
            f.write("first: test\n")
        second.write_text("second: epoch 1\n")
    lines = [r.getMessage() for r in caplog.records if r.name == "recsys.train.run"]
    assert lines == ["first: epoch 1", "first: test", "second: epoch 1"]


@pytest.mark.parametrize(
    ("name", "cls"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_weight_decay_spares_the_embedding_tables(name: str, cls: type) -> None:
    from recsys.models import WideDeep, embedding_tables, train_wrapper
    from recsys.train.loop import _make_optimizers

    model = WideDeep(spec(), hidden_units=[8])
    wrapper = train_wrapper(model)
    trainer = {"lr": 0.01, "weight_decay": 0.1, "optimizer": name}
    (optimizer,) = _make_optimizers(wrapper, trainer)
    assert type(optimizer) is cls
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    tables = {id(w) for w in embedding_tables(model)}
    assert tables and len(decay) == len(list(model.parameters()))
    assert {decay[t] for t in tables} == {0.0}
    assert {d for p, d in decay.items() if p not in tables} == {0.1}
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        _make_optimizers(wrapper, {**trainer, "optimizer": "sgd"})


def test_an_unknown_optimizer_fails_when_the_config_is_composed(data: Path, tmp_path: Path) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="optimizer"):
        train_config(data, tmp_path, "wide_deep", "trainer.optimizer=sgd")
