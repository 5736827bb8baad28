"""The driver side of training: check the config, make the workers' plain dict, run a backend.

The driver owns Hydra: it resolves the config once and hands workers a plain dict
(`worker_config`). `backend=local` runs the loop in this process; `backend=ray` runs it under
`ray.train.torch.TorchTrainer` on `backend.num_workers` workers (DDP over gloo), starting a
local Ray unless `backend.address` names a cluster. `run_trainings` trains several models
with one Ray worker group when their backend settings agree.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from recsys import interrupts
from recsys.config.checks import check_ranges
from recsys.errors import RecsysError
from recsys.features.feature_spec import FEATURE_SPEC_FILE, FeatureSpec
from recsys.models import build_model
from recsys.train.data import used_features
from recsys.train.loop import train_jobs_per_worker, train_loop_per_worker
from recsys.train.precision import check_ipex, resolve_precision

log = logging.getLogger(__name__)


class TrainConfigError(RecsysError, ValueError):
    """A training config that cannot work; found before any training starts."""


def _enum_name(value: Any) -> str:
    return value.name if hasattr(value, "name") else str(value)


def check_train_config(cfg: DictConfig) -> None:
    """Everything that can be known wrong before training: value ranges of the model,
    trainer and backend (before the data is looked at), data, spec vs data, model."""
    check_ranges(cfg, TrainConfigError)
    data = Path(cfg.data)
    if not data.is_dir():
        raise TrainConfigError(f"data directory {data} does not exist (set data=<processed dir>)")
    if not (data / FEATURE_SPEC_FILE).is_file():
        raise TrainConfigError(f"{data} holds no {FEATURE_SPEC_FILE}: run recsys.preprocess first")
    spec = FeatureSpec.load(data)
    for split in ("train", "valid"):
        split_dir = data / split
        files = sorted(split_dir.glob("*.parquet")) if split_dir.is_dir() else []
        if not files:
            raise TrainConfigError(f"{split_dir} holds no parquet files")
        try:
            columns = set(pq.read_schema(files[0]).names)
        except Exception as e:
            raise TrainConfigError(f"cannot read {files[0]}: {e}") from e
        missing = [f.name for f in used_features(spec) if f.name not in columns]
        if missing:
            raise TrainConfigError(
                f"the spec does not match the data: {files[0]} lacks columns {missing}"
            )
    try:
        model = build_model(cfg.model, spec)
    except (ValueError, TypeError, KeyError) as e:
        raise TrainConfigError(f"model {cfg.model._target_} cannot be built: {e}") from e
    if not hasattr(model, "item_tower") and spec.label is None:
        raise TrainConfigError(f"{FEATURE_SPEC_FILE} names no label for a ranker to train on")
    if cfg.backend.ipex:
        check_ipex()


def worker_config(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """The plain dict every worker gets (no Hydra, no OmegaConf)."""
    precision, why = resolve_precision(_enum_name(cfg.precision))
    log.info("precision %s (%s)", precision, why)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True, enum_to_str=True)
    return {
        "backend": cfg.backend.name,
        "data": str(Path(cfg.data).resolve()),
        "run_dir": str(run_dir.resolve()),
        "seed": int(cfg.seed),
        "resume": bool(cfg.resume),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "trainer": trainer,
        "precision": precision,
        "threads": int(cfg.backend.cpus_per_worker),
        "ipex": bool(cfg.backend.ipex),
        "resolved_config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
    }


def run_training(
    cfg: DictConfig, run_dir: Path, *, fail_once_at: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Train with the configured backend; return `result.json` (best metric, test metrics).

    `fail_once_at` ({epoch, step, rank, marker}) raises once inside the loop: a test hook
    for failure recovery.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    config = worker_config(cfg, run_dir)
    if fail_once_at is not None:
        config["fail_once_at"] = fail_once_at
    if cfg.resume and not (run_dir / "checkpoints" / "last" / "state.json").is_file():
        raise TrainConfigError(f"resume=true but {run_dir}/checkpoints/last holds no checkpoint")
    try:
        if config["backend"] == "ray":
            run_ray(config, cfg.backend)
        else:
            train_loop_per_worker(config)
    except BaseException:
        # a checkpoint being written when a worker was stopped (Ctrl-C, a failure)
        for scratch in run_dir.glob(".ckpt.tmp-*"):
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    return _result(run_dir)


def _result(run_dir: Path) -> dict[str, Any]:
    result = json.loads((run_dir / "result.json").read_text())
    log.info(
        "best %s %.4f at epoch %s; run directory %s",
        result["metric"],
        result["best"] if result["best"] is not None else float("nan"),
        result["best_epoch"],
        run_dir,
    )
    return result


SHARED_BACKEND_KEYS = ("name", "address", "num_workers", "cpus_per_worker", "max_failures")


def can_share_workers(cfgs: list[DictConfig]) -> bool:
    """Whether these trainings can run one after another in one Ray worker group."""
    if len(cfgs) < 2 or any(cfg.backend.name != "ray" or cfg.resume for cfg in cfgs):
        return False
    first = cfgs[0].backend
    return all(all(cfg.backend[k] == first[k] for k in SHARED_BACKEND_KEYS) for cfg in cfgs)


def run_trainings(
    jobs: list[tuple[DictConfig, Path]], *, fail_once_at: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Train each (config, run directory) in turn; return their `result.json`s.

    On Ray with the same backend settings (and no `resume`), the trainings share one worker
    group, so Ray Train's start-up is paid once; otherwise each is a `run_training`.
    `fail_once_at` is `run_training`'s test hook with a `job` index added.
    """
    cfgs = [cfg for cfg, _ in jobs]
    if not can_share_workers(cfgs):
        return [
            run_training(cfg, run_dir, fail_once_at=_fault_for(fail_once_at, index))
            for index, (cfg, run_dir) in enumerate(jobs)
        ]
    configs = []
    for index, (cfg, run_dir) in enumerate(jobs):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "result.json").unlink(missing_ok=True)  # a job with one is skipped
        config = worker_config(cfg, run_dir)
        config["job"] = f"{index}:{run_dir.resolve()}"
        fault = _fault_for(fail_once_at, index)
        if fault is not None:
            config["fail_once_at"] = fault
        configs.append(config)
    run_ray({"jobs": configs}, cfgs[0].backend)
    return [_result(run_dir) for _, run_dir in jobs]


def _fault_for(fail_once_at: dict[str, Any] | None, index: int) -> dict[str, Any] | None:
    if fail_once_at is None or fail_once_at.get("job", 0) != index:
        return None
    return {key: value for key, value in fail_once_at.items() if key != "job"}


def ensure_ray(address: str | None) -> None:
    """Start a local Ray (or join `address`) once per process; its logs stay off the console."""
    import ray

    if ray.is_initialized():
        return
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=False,
        # Ray's start-up warnings (auth tokens, dashboards) are noise on one machine
        logging_level=logging.ERROR,
    )
    interrupts.on_interrupt("ray", stop_ray)


def stop_ray() -> None:
    """Disconnect from Ray; a local Ray started by `ensure_ray` ends with its workers, which
    this waits for (after Ctrl-C they would go on writing into a directory being removed)."""
    import ray

    interrupts.forget("ray")
    with interrupts.reaping_children():
        ray.shutdown()


@contextlib.contextmanager
def _tail(paths: list[Path], interval: float = 0.5) -> Iterator[None]:
    """Log lines appended to `paths` while the block runs (the workers' progress), in the
    order of `paths`: one reader, so a training's last lines come before the next one's."""
    stop = threading.Event()

    def follow() -> None:
        positions = dict.fromkeys(paths, 0)
        while True:
            finished = stop.wait(interval)
            for path in paths:
                if not path.exists():
                    continue
                with path.open() as f:
                    f.seek(positions[path])
                    for line in f:
                        log.info(line.rstrip("\n"))
                    positions[path] = f.tell()
            if finished:
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_ray(config: dict[str, Any], backend: DictConfig) -> None:
    """One `TorchTrainer.fit` of one training's config, or of `{"jobs": [config, ...]}`."""
    from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ensure_ray(backend.address)
    jobs = config.get("jobs", [config])
    run_dir = Path(jobs[0]["run_dir"])  # Ray's own run files go to the first training's
    last = run_dir / "checkpoints" / "last"
    resume_from = Checkpoint.from_directory(str(last)) if config.get("resume") else None
    trainer = TorchTrainer(
        train_jobs_per_worker if "jobs" in config else train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(
            num_workers=int(backend.num_workers),
            use_gpu=False,
            resources_per_worker={"CPU": float(backend.cpus_per_worker)},
        ),
        run_config=RunConfig(
            name="ray",
            storage_path=str(run_dir),
            failure_config=FailureConfig(max_failures=int(backend.max_failures)),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        resume_from_checkpoint=resume_from,
    )
    with _tail([Path(job["run_dir"]) / "progress.log" for job in jobs]):
        try:
            # from a helper thread: called from the main thread, `fit` replaces our SIGINT
            # handler with Ray's, which exits 0 or 1 and is never removed again
            interrupts.call_in_thread(trainer.fit)
        except KeyboardInterrupt:
            stop_ray()
            raise
