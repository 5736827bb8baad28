"""The one training loop, `train_loop_per_worker(config)`, for both backends.

`backend=local` calls it in this process (rank 0 of 1); `backend=ray` runs it on every Ray
Train worker under `TorchTrainer` (DDP over gloo). `config` is a plain dict made by the driver
(`recsys.train.run.worker_config`): workers never see Hydra.

Per epoch: train on this worker's shard (seeded shuffle), evaluate on the validation split
(metrics synchronised across workers), update early stopping, checkpoint. Rank 0 writes
`metrics.jsonl`, `progress.log` and mirrors the checkpoint to `<run_dir>/checkpoints/last`
(and `best`). After the last epoch the best weights are evaluated on the test split and
`result.json` is written.

`train_jobs_per_worker({"jobs": [config, ...]})` runs several trainings one after another in
the same workers: on Ray they then share one worker group, so Ray Train's start-up (processes,
imports, process group: about 20 s here) is paid once instead of once per model.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from recsys import interrupts
from recsys.features.feature_spec import FeatureSpec
from recsys.models import build_model, split_sparse_parameters, train_wrapper
from recsys.models.inputs import embedding_tables
from recsys.provenance import write_json_atomic
from recsys.seeding import set_seed
from recsys.train.checkpoints import (
    read_checkpoint,
    read_rank_rng,
    replace_dir,
    restore_python_numpy_rng,
    write_checkpoint,
    write_rank_rng,
)
from recsys.train.data import Shard, iter_batches, num_batches, read_shard
from recsys.train.early_stopping import EarlyStopping
from recsys.train.metrics import (
    ItemCatalogue,
    RankerMetrics,
    evaluate_retrieval,
    held_out_queries,
)
from recsys.train.precision import apply_ipex, autocast

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0


# ------------------------------------------------------------------------ contexts


class LocalContext:
    """Rank 0 of 1 in this process; resumes from `<run_dir>/checkpoints/last`."""

    rank = 0
    world_size = 1
    echo = True  # progress lines also go to this process's console

    def __init__(self, run_dir: Path, resume: bool) -> None:
        self.run_dir, self.resume = run_dir, resume

    @contextlib.contextmanager
    def restored_checkpoint(self) -> Iterator[Path | None]:
        last = self.run_dir / "checkpoints" / "last"
        yield last if self.resume and (last / "state.json").is_file() else None

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        pass


class RayContext:
    """A Ray Train worker: checkpoints go to Ray (failure recovery restores the latest).

    `job` names the training when several share one worker group: Ray's latest checkpoint
    may then belong to an earlier training, and is only restored when its job matches.
    """

    echo = False  # the driver tails progress.log instead of Ray's forwarded worker logs

    def __init__(self, job: str | None = None) -> None:
        import ray.train

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.job = job

    @contextlib.contextmanager
    def restored_checkpoint(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            mine = self.job is None or _job_of(Path(directory)) == self.job
            yield Path(directory) if mine else None

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


def _job_of(checkpoint: Path) -> str | None:
    state = checkpoint / "state.json"
    return json.loads(state.read_text()).get("job") if state.is_file() else None


def _context(config: dict[str, Any]) -> LocalContext | RayContext:
    if config["backend"] == "ray":
        return RayContext(config.get("job"))
    return LocalContext(Path(config["run_dir"]), bool(config.get("resume")))


# ------------------------------------------------------------------------ helpers


class Progress:
    """Rank 0's progress lines: appended to `progress.log`, echoed to the console locally."""

    def __init__(self, run_dir: Path, rank: int, echo: bool) -> None:
        self.path = run_dir / "progress.log"
        self.enabled, self.echo = rank == 0, echo

    def __call__(self, line: str) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(line + "\n")
        if self.echo:
            log.info(line)


def _maybe_fail(config: dict[str, Any], epoch: int, step: int, rank: int) -> None:
    """Fault injection for tests: raise once at (epoch, step, rank); a marker file says done."""
    spot = config.get("fail_once_at")
    if not spot or (epoch, step, rank) != (spot["epoch"], spot["step"], spot["rank"]):
        return
    marker = Path(spot["marker"])
    if marker.exists():
        return
    marker.touch()
    raise RuntimeError(f"injected failure at epoch {epoch}, step {step}, rank {rank}")


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def _wrapper_extra(wrapper: nn.Module) -> dict[str, torch.Tensor]:
    """The wrapper's own state (buffers such as logQ estimates), without the model's."""
    return {k: v for k, v in wrapper.state_dict().items() if not k.startswith("model.")}


OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def _make_optimizers(wrapper: nn.Module, trainer: dict[str, Any]) -> list[torch.optim.Optimizer]:
    """Adam or AdamW over the dense parameters, plus SparseAdam for tables built sparse.

    `weight_decay` applies to every parameter but the embedding tables: a table of 20,000
    ids sees each row in a few batches only, so a decay applied at every step would erase
    the rarer rows between their batches. Rankers regularise their tables with an L2 prior
    in the loss instead (`model.embedding_l2`, RankerTrain).
    """
    dense, sparse = split_sparse_parameters(wrapper)
    tables = {id(w) for w in embedding_tables(wrapper)}
    groups = [
        {"params": [p for p in dense if id(p) not in tables]},
        {"params": [p for p in dense if id(p) in tables], "weight_decay": 0.0},
    ]
    name = trainer.get("optimizer", "adam")
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)}")
    optimizers: list[torch.optim.Optimizer] = [
        OPTIMIZERS[name](
            [g for g in groups if g["params"]],
            lr=trainer["lr"],
            weight_decay=trainer["weight_decay"],
        )
    ]
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=trainer["lr"]))
    return optimizers


def _make_scheduler(
    optimizers: list[torch.optim.Optimizer], trainer: dict[str, Any], total_steps: int
) -> Any | None:
    if trainer["lr_schedule"] == "none":
        return None
    # one schedule for every optimizer: LambdaLR takes a list of lambdas, one per optimizer
    if trainer["lr_schedule"] == "cosine":

        def factor(step: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))

        return [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in optimizers]
    raise ValueError(f"unknown lr_schedule {trainer['lr_schedule']!r}")


def _mean(values: MeanMetric) -> float:
    return float(values.compute())


# ----------------------------------------------------------------------- the loop


def train_loop_per_worker(config: dict[str, Any]) -> None:
    ctx = _context(config)
    rank, world = ctx.rank, ctx.world_size
    run_dir = Path(config["run_dir"])
    trainer = config["trainer"]
    precision = config["precision"]
    torch.set_num_threads(int(config["threads"]))
    set_seed(int(config["seed"]), rank)
    progress = Progress(run_dir, rank, ctx.echo)

    data_dir = Path(config["data"])
    spec = FeatureSpec.load(data_dir)
    train = read_shard(data_dir, "train", spec, rank, world)
    valid = read_shard(data_dir, "valid", spec, rank, world)
    batch_size = max(1, trainer["batch_size"] // world)

    model = build_model(config["model"], spec)
    # a ranker's L2 prior on its tables is spread over the batches of the whole split
    wrapper = train_wrapper(model, train_rows=train.total_rows)
    is_retrieval = hasattr(model, "item_tower")
    k = int(trainer["retrieval_k"])
    metric = trainer["early_stopping_metric"]
    if metric == "auto":
        metric = f"val/recall@{k}" if is_retrieval else "val/auc"
    stopper = EarlyStopping(metric, trainer["early_stopping_mode"], trainer["patience"])
    catalogue = None
    if is_retrieval:
        catalogue = ItemCatalogue(read_shard(data_dir, "train", spec, 0, 1), spec)

    optimizers = _make_optimizers(wrapper, trainer)
    steps_per_epoch = num_batches(train.num_rows, batch_size)
    if trainer.get("max_steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, int(trainer["max_steps_per_epoch"]))
    schedulers = _make_scheduler(optimizers, trainer, steps_per_epoch * trainer["epochs"])
    if config.get("ipex"):
        wrapper, optimizers[0] = apply_ipex(wrapper, optimizers[0], precision)

    start_epoch, best_state = 0, None
    with ctx.restored_checkpoint() as restored:
        if restored is not None:
            saved = read_checkpoint(restored)
            model.load_state_dict(saved["model"])
            wrapper.load_state_dict(saved["wrapper"], strict=False)
            for optimizer, state in zip(optimizers, saved["optimizers"], strict=True):
                optimizer.load_state_dict(state)
            if schedulers is not None and saved["scheduler"] is not None:
                for scheduler, state in zip(schedulers, saved["scheduler"], strict=True):
                    scheduler.load_state_dict(state)
            state = saved["state"]
            start_epoch = state["epoch"] + 1
            for key, value in state["early_stopping"].items():
                setattr(stopper, key, value)
            restore_python_numpy_rng(state["rng"])
            rng = read_rank_rng(restored, rank)
            if rng is not None:
                torch.set_rng_state(rng)
            if (restored.parent / "best" / "model.pt").is_file() and rank == 0:
                best_state = read_checkpoint(restored.parent / "best")["model"]
            progress(f"resumed from {restored} after epoch {state['epoch'] + 1}")

    if world > 1:
        import ray.train.torch

        wrapper = ray.train.torch.prepare_model(wrapper, move_to_device=False)

    if rank == 0 and start_epoch == 0:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    progress(
        f"training {type(model).__name__} on {train.total_rows:,} rows ({world} worker(s), "
        f"batch {batch_size * world}, {precision}, {steps_per_epoch} steps/epoch)"
    )

    epochs = int(trainer["epochs"])
    epoch = start_epoch - 1
    for epoch in range(start_epoch, epochs):
        # ---- train
        wrapper.train()
        loss_mean = MeanMetric()
        seen, t0, last_note = 0, time.perf_counter(), time.perf_counter()
        for step, batch in enumerate(
            iter_batches(
                train,
                batch_size,
                shuffle=True,
                seed=int(config["seed"]),
                epoch=epoch,
                rank=rank,
                max_batches=steps_per_epoch,
            )
        ):
            _maybe_fail(config, epoch, step, rank)
            with autocast(precision):
                loss, _ = wrapper(batch)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            if rank == 0:
                interrupts.pause_point("train")
            for scheduler in schedulers or ():
                scheduler.step()
            n = len(next(iter(batch.values())))
            loss_mean.update(loss.detach().float(), weight=n)
            seen += n
            now = time.perf_counter()
            if now - last_note > PROGRESS_EVERY_S:
                last_note = now
                progress(
                    f"  epoch {epoch + 1}: step {step + 1}/{steps_per_epoch}, "
                    f"{seen * world / (now - t0):,.0f} samples/s"
                )
        train_seconds = time.perf_counter() - t0
        metrics = {
            "train/loss": _mean(loss_mean),
            "train/samples_per_s": seen * world / train_seconds,
            "train/seconds": train_seconds,
        }

        # ---- validate
        metrics.update(evaluate(wrapper, valid, spec, precision, trainer, "val", catalogue, k))
        improved = stopper.update(epoch, metrics)
        if improved and rank == 0:
            best_state = copy.deepcopy(model.state_dict())

        # ---- checkpoint and report
        state = {"epoch": epoch, "metrics": metrics, "early_stopping": stopper.state()}
        if config.get("job"):
            state["job"] = config["job"]
        # inside the run directory, which the driver removes whole if the run is interrupted:
        # a worker killed there leaves no scratch behind (in /tmp it would stay)
        with tempfile.TemporaryDirectory(prefix=".ckpt.tmp-", dir=run_dir) as tmp:
            checkpoint_dir = Path(tmp) / "checkpoint"
            if rank == 0:
                write_checkpoint(
                    checkpoint_dir,
                    model=model,
                    wrapper_extra=_wrapper_extra(_unwrap(wrapper)),
                    optimizers=optimizers,
                    scheduler_state=[s.state_dict() for s in schedulers] if schedulers else None,
                    state=state,
                    spec=spec,
                    config=config["resolved_config"],
                )
                write_rank_rng(checkpoint_dir, rank)
                replace_dir(checkpoint_dir, run_dir / "checkpoints" / "last")
                if improved:
                    replace_dir(checkpoint_dir, run_dir / "checkpoints" / "best")
                with (run_dir / "metrics.jsonl").open("a") as f:
                    f.write(json.dumps({"epoch": epoch + 1, **metrics}) + "\n")
            else:
                checkpoint_dir.mkdir()
                write_rank_rng(checkpoint_dir, rank)
            ctx.report({"epoch": epoch + 1, **metrics}, checkpoint_dir)

        progress(_epoch_line(epoch, epochs, metrics, stopper.metric, improved))
        if stopper.should_stop:
            progress(f"early stop: {stopper.metric} did not improve for {stopper.patience} epochs")
            break

    # ---- test the best weights
    result: dict[str, Any] = {
        "metric": stopper.metric,
        "best": stopper.best,
        "best_epoch": None if stopper.best_epoch is None else stopper.best_epoch + 1,
        "epochs_run": epoch + 1,
        "stopped_early": stopper.should_stop,
        "precision": precision,
        "workers": world,
    }
    if (data_dir / "test").is_dir():
        if world > 1:
            # every worker needs the best weights: rank 0 holds them, so broadcast
            best_state = _broadcast_state(best_state, model)
        if best_state is not None:
            model.load_state_dict(best_state)
        test = read_shard(data_dir, "test", spec, rank, world)
        result["test"] = evaluate(wrapper, test, spec, precision, trainer, "test", catalogue, k)
        progress(
            "test (best epoch): "
            + ", ".join(f"{name} {value:.4f}" for name, value in result["test"].items())
        )
    if rank == 0:
        write_json_atomic(run_dir / "result.json", result)


def train_jobs_per_worker(config: dict[str, Any]) -> None:
    """`train_loop_per_worker` for each of `config["jobs"]` in turn, in the same workers.

    After a worker failure Ray restarts the group and calls this again: trainings that wrote
    their `result.json` are skipped, and the one that was running resumes from its checkpoint.
    """
    for job in config["jobs"]:
        if (Path(job["run_dir"]) / "result.json").is_file():
            continue
        train_loop_per_worker(job)


def _broadcast_state(state: dict | None, model: nn.Module) -> dict:
    import torch.distributed as dist

    objects = [state]
    dist.broadcast_object_list(objects, src=0)
    return objects[0] if objects[0] is not None else model.state_dict()


@torch.no_grad()
def evaluate(
    wrapper: nn.Module,
    shard: Shard,
    spec: FeatureSpec,
    precision: str,
    trainer: dict[str, Any],
    prefix: str,
    catalogue: ItemCatalogue | None,
    k: int,
) -> dict[str, float]:
    """Metrics of `shard` under `prefix`, synchronised across workers."""
    wrapper.eval()
    batch_size = int(trainer["eval_batch_size"])
    if catalogue is not None:
        model = _unwrap(wrapper).model
        loss_mean = MeanMetric()
        for batch in iter_batches(shard, batch_size):
            with autocast(precision):
                loss, _ = wrapper(batch)
            loss_mean.update(loss.float(), weight=len(batch[spec.item_id]))
        metrics = {f"{prefix}/loss": _mean(loss_mean)}
        queries = held_out_queries(shard, spec)
        metrics.update(evaluate_retrieval(model, queries, catalogue, spec, prefix, k))
        return metrics
    ranker = RankerMetrics(prefix)
    for batch in iter_batches(shard, batch_size):
        with autocast(precision):
            _, logits = wrapper(batch)
        # GAUC needs each row's user: the spec's user_id, when it names one
        ranker.update(logits, batch[spec.label], batch.get(spec.user_id or ""))
    return ranker.compute()


def _epoch_line(
    epoch: int, epochs: int, metrics: dict[str, float], watched: str, improved: bool
) -> str:
    shown = [f"train loss {metrics['train/loss']:.4f}"]
    shown += [
        f"{name} {value:.4f}"
        for name, value in metrics.items()
        if name.startswith("val/") and name in (watched, "val/logloss", "val/loss")
    ]
    best = " (best)" if improved else ""
    return (
        f"epoch {epoch + 1}/{epochs}: {', '.join(shown)}{best}; "
        f"{metrics['train/samples_per_s']:,.0f} samples/s, {metrics['train/seconds']:.1f} s"
    )
