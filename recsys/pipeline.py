"""`python -m recsys.pipeline` (what `make demo` runs): raw logs to live recommendations.

Stages, each a call into the same code the stage's own command runs, with that command's
config composed from `conf/` (so `pipeline.overrides.<stage>` takes any of its keys):

  generate  RecSys 2021 data with the planted signal              recsys.generate
  features  ranker and retrieval features on one local Spark      recsys.preprocess
  train     the ranker (model=...) and the two-tower on Ray        recsys.train
  export    one bundle                                             recsys.export
  evaluate  Recall@K of recall + rank against popularity           recsys.evaluate
  serve     the gRPC server on a free loopback port, a few real Recommend calls, then stop

Everything a stage writes goes to `pipeline.work_dir`, under a temporary name renamed into
place when the stage is complete, so an interrupted run leaves no half-written output. With
`resume=true` a stage whose output exists and was made from the same settings (a hash of its
resolved config and of its inputs' hashes) is reused. The run directory gets `report.md`,
`report.html` and the training curves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from recsys import interrupts
from recsys.cli import run_task
from recsys.config import CONF_DIR, register_configs
from recsys.config.checks import check_ranges
from recsys.data.generator import (
    format_summary,
    generate,
    load_summary,
    settings_from_dataset,
)
from recsys.errors import RecsysError
from recsys.provenance import run_log_file, temp_dir_for, write_json_atomic

log = logging.getLogger(__name__)
register_configs()

STAGES = ("generate", "features", "train", "export", "evaluate", "serve")
STAGE_DIR = "_stages"  # one JSON marker per finished stage: its key and its summary


class PipelineError(RecsysError, ValueError):
    """A pipeline setting that cannot work (unknown stage, a stage without its input)."""


@dataclass
class StageRecord:
    """What one stage did: shown on the console, kept in its marker, used by the report."""

    name: str
    seconds: float
    reused: bool
    line: str  # the one-line summary printed when the stage ends
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineState:
    """The pipeline's settings and what its stages have produced so far."""

    cfg: DictConfig
    work_dir: Path
    run_dir: Path
    choices: dict[str, str]
    user_overrides: list[str]
    keys: dict[str, str] = field(default_factory=dict)
    records: dict[str, StageRecord] = field(default_factory=dict)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    spark: Any = None

    def path(self, *parts: str) -> Path:
        return self.work_dir.joinpath(*parts)


# ------------------------------------------------------------------ settings and markers


def stage_key(*parts: Any) -> str:
    """A stable hash of a stage's settings and of its inputs' keys."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def settings_of(cfg: DictConfig) -> dict[str, Any]:
    """A stage config as plain data, without the parts that change from run to run."""
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(plain, dict)
    for volatile in ("paths", "hydra", "overwrite", "resume"):
        plain.pop(volatile, None)
    return plain


def marker_path(state: PipelineState, name: str) -> Path:
    return state.path(STAGE_DIR, f"{name}.json")


def reusable(state: PipelineState, name: str, key: str, outputs: list[Path]) -> dict | None:
    """The marker of an earlier run of this stage with the same key, if its outputs exist."""
    if not state.cfg.resume:
        return None
    marker = marker_path(state, name)
    if not marker.is_file() or not all(p.exists() for p in outputs):
        return None
    try:
        saved = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None
    return saved if saved.get("key") == key else None


def reused_record(
    state: PipelineState, name: str, key: str, outputs: list[Path]
) -> StageRecord | None:
    """The earlier record of this step when `resume` allows reusing it (its key is kept)."""
    earlier = reusable(state, name, key, outputs)
    if earlier is None:
        return None
    state.keys[name] = key
    return StageRecord(**{**earlier["record"], "reused": True})


def mark_done(state: PipelineState, name: str, key: str, record: StageRecord) -> None:
    write_json_atomic(marker_path(state, name), {"key": key, "record": asdict(record)})
    state.keys[name] = key


def run_or_reuse(
    state: PipelineState,
    name: str,
    key: str,
    outputs: list[Path],
    run: Callable[[], StageRecord],
) -> StageRecord:
    """An earlier record of this step when `resume` allows it, else `run()` and mark it done."""
    record = reused_record(state, name, key, outputs)
    if record is None:
        t = time.perf_counter()
        record = run()
        record.seconds = round(time.perf_counter() - t, 1)
        mark_done(state, name, key, record)
    return record


def compose_stage(config_name: str, overrides: list[str]) -> DictConfig:
    """The config `python -m recsys.<stage> <overrides>` would get (same files, same checks)."""
    from hydra import compose

    try:
        return compose(config_name=config_name, overrides=overrides)
    except Exception as e:  # Hydra's composition errors name the bad key
        raise PipelineError(f"{config_name} config with {overrides}: {e}") from e


def _literal(value: Any) -> str:
    """A value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_literal(v)}" for k, v in value.items()) + "}"
    return quoted(str(value))


def as_overrides(cfg: DictConfig, root: str) -> list[str]:
    """The pipeline's resolved `root` node (pipeline.yaml and the command line) as overrides
    of a stage config with the same group, so both trainings get the same settings."""
    node = OmegaConf.to_container(cfg[root], resolve=True, enum_to_str=True)
    assert isinstance(node, dict)
    return [f"{root}.{key}={_literal(value)}" for key, value in node.items() if key != "_target_"]


def quoted(path: Path | str) -> str:
    return "'" + str(path).replace("'", "\\'") + "'"


# ------------------------------------------------------------------ stages


def stage_generate(state: PipelineState) -> StageRecord:
    cfg = state.cfg
    settings = settings_from_dataset(cfg.dataset, rows=cfg.pipeline.rows, seed=cfg.seed)
    settings.validate()
    out = state.path("recsys2021")
    state.keys["generate"] = stage_key(asdict(settings))
    earlier = load_summary(out) if cfg.resume else None
    if earlier is not None and earlier.settings == asdict(settings):
        summary, reused = earlier, True
    else:
        summary, reused = generate(settings, out, overwrite=True), False
    log.debug(format_summary(summary))
    rows = summary.rows["train"] + summary.rows["test"]
    best = summary.best_auc.get("test")
    return StageRecord(
        "generate",
        summary.seconds,
        reused,
        f"{rows:,} rows, label rate {summary.label_rate['train'].get('any', float('nan')):.1%}"
        + (f", best achievable test AUC {best:.4f}" if best is not None else "")
        + f" -> {out}",
        {"summary": asdict(summary)},
    )


def _spark(state: PipelineState, cfg: DictConfig) -> Any:
    if state.spark is None:
        from recsys.features.spark import build_spark

        # the JVM's warnings and console log go to the run's log file, not the terminal
        state.spark = build_spark(
            OmegaConf.to_container(cfg.spark, resolve=True), jvm_log=run_log_file()
        )
    return state.spark


def _features_one(state: PipelineState, role: str, name: str) -> StageRecord:
    from recsys.preprocess import preprocess

    cfg = state.cfg
    out = state.path(name)
    stage_cfg = compose_stage(
        "preprocess",
        [
            f"features={name}",
            "dataset=recsys2021",
            f"data={quoted(state.path('recsys2021'))}",
            f"out={quoted(out)}",
            "overwrite=true",
            f"seed={cfg.seed}",
            *cfg.pipeline.overrides.preprocess,
        ],
    )

    def run() -> StageRecord:
        log.info("  %s features (%s) on Spark ...", role, name)
        summary = preprocess(stage_cfg, spark=_spark(state, stage_cfg))
        rows = summary.rows
        return StageRecord(
            f"features_{role}",
            0.0,
            False,
            f"{name}: train {rows['train']:,} / valid {rows['valid']:,} / "
            f"test {rows['test']:,} rows",
            {"summary": asdict(summary), "out": str(out)},
        )

    key = stage_key(settings_of(stage_cfg), state.keys["generate"])
    return run_or_reuse(state, f"features_{role}", key, [out], run)


def combined(name: str, parts: dict[str, StageRecord]) -> StageRecord:
    """One stage's record from its parts (ranker, retrieval, baseline), keyed by role."""
    records = list(parts.values())
    return StageRecord(
        name,
        round(sum(r.seconds for r in records), 1),
        all(r.reused for r in records),
        "; ".join(r.line for r in records),
        {role: r.details for role, r in parts.items()},
    )


def stage_features(state: PipelineState) -> StageRecord:
    cfg = state.cfg
    ranker = _features_one(state, "ranker", str(cfg.pipeline.ranker_features))
    retrieval = _features_one(state, "retrieval", str(cfg.pipeline.retrieval_features))
    return combined("features", {"ranker": ranker, "retrieval": retrieval})


@dataclass
class Training:
    """One of the train stage's two trainings: its composed config, key and run directory."""

    role: str  # ranker | retrieval | baseline (trained on the ranker's features)
    model: str
    cfg: DictConfig
    key: str
    out: Path

    @property
    def name(self) -> str:
        return f"train_{self.role}"


def _training(state: PipelineState, role: str, model: str, overrides: list[str]) -> Training:
    from recsys.train.run import check_train_config

    stage_cfg = compose_stage("train", overrides)
    check_train_config(stage_cfg)
    features = "retrieval" if role == "retrieval" else "ranker"
    key = stage_key(settings_of(stage_cfg), state.keys[f"features_{features}"])
    return Training(role, model, stage_cfg, key, state.path("runs", role))


def _where(cfg: DictConfig) -> str:
    if cfg.backend.name == "ray":
        return f"Ray, {cfg.backend.num_workers} workers"
    return "the local backend"


def _run_trainings(state: PipelineState, trainings: list[Training]) -> list[StageRecord]:
    """Run `trainings` (one Ray worker group when their backends agree) and mark each done."""
    from recsys.provenance import record_run
    from recsys.train.run import can_share_workers, run_trainings

    shared = can_share_workers([t.cfg for t in trainings])
    if len(trainings) > 1 and not shared:
        return [record for t in trainings for record in _run_trainings(state, [t])]
    names = " then ".join(f"{t.role} {t.model}" for t in trainings)
    log.info(
        "  %s on %s%s ...", names, _where(trainings[0].cfg), " (one worker group)" if shared else ""
    )
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(temp_dir_for(t.out)) for t in trainings]
        for training, tmp in zip(trainings, tmps, strict=True):
            record_run(training.cfg, tmp)
        results = run_trainings([(t.cfg, tmp) for t, tmp in zip(trainings, tmps, strict=True)])
    seconds = round(time.perf_counter() - t0, 1)
    records = []
    for training, result in zip(trainings, results, strict=True):
        record = StageRecord(
            training.name,
            seconds,  # trainings that shared one worker group share its time
            False,
            f"{training.role} {training.model}: best {result['metric']} "
            f"{_num(result['best'])} at epoch {result['best_epoch']}",
            {"result": result, "run_dir": str(training.out), "model": training.model},
        )
        mark_done(state, training.name, training.key, record)
        records.append(record)
    return records


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def stage_train(state: PipelineState) -> StageRecord:
    cfg = state.cfg
    common = [
        f"backend={state.choices['backend']}",
        f"trainer={state.choices['trainer']}",
        *as_overrides(cfg, "backend"),
        *as_overrides(cfg, "trainer"),
        f"seed={cfg.seed}",
        f"precision={OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)['precision']}",
    ]
    trainings = [
        _training(
            state,
            "ranker",
            state.choices["model"],
            [
                f"model={state.choices['model']}",
                f"data={quoted(state.path(str(cfg.pipeline.ranker_features)))}",
                *common,
                *as_overrides(cfg, "model"),
                *cfg.pipeline.overrides.train_ranker,
            ],
        ),
        _training(
            state,
            "retrieval",
            str(cfg.pipeline.retrieval_model),
            [
                f"model={cfg.pipeline.retrieval_model}",
                f"data={quoted(state.path(str(cfg.pipeline.retrieval_features)))}",
                *common,
                *cfg.pipeline.overrides.train_retrieval,
            ],
        ),
    ]
    baseline = cfg.pipeline.baseline_model
    if baseline is not None:
        # the same features, split, loop and trainer settings as the ranker: only the model
        # differs, so the difference in test AUC is the ranker's own
        trainings.append(
            _training(
                state,
                "baseline",
                str(baseline),
                [
                    f"model={baseline}",
                    f"data={quoted(state.path(str(cfg.pipeline.ranker_features)))}",
                    *common,
                    *cfg.pipeline.overrides.train_baseline,
                ],
            )
        )
    records: dict[str, StageRecord] = {}
    pending = []
    for training in trainings:
        record = reused_record(state, training.name, training.key, [training.out / "result.json"])
        if record is None:
            pending.append(training)
        else:
            records[training.role] = record
    if pending:
        for training, record in zip(pending, _run_trainings(state, pending), strict=True):
            records[training.role] = record
    return combined("train", {t.role: records[t.role] for t in trainings})


def stage_export(state: PipelineState) -> StageRecord:
    from recsys.export import layout
    from recsys.export.__main__ import settings_from_config
    from recsys.export.writer import export_bundle

    out = state.path("bundle")
    stage_cfg = compose_stage(
        "export",
        [
            f"ranker_run={quoted(state.path('runs', 'ranker'))}",
            f"retrieval_run={quoted(state.path('runs', 'retrieval'))}",
            f"out={quoted(out)}",
            "overwrite=true",
            *state.cfg.pipeline.overrides.export,
        ],
    )
    key = stage_key(
        settings_of(stage_cfg), state.keys["train_ranker"], state.keys["train_retrieval"]
    )

    def run() -> StageRecord:
        manifest = export_bundle(settings_from_config(stage_cfg))
        size = sum(f["bytes"] for f in manifest["files"].values())
        index, recall = manifest["index"], manifest["index"]["recall"]
        items = manifest["tables"]["retrieval"].get(layout.ITEMS, 0)
        return StageRecord(
            "export",
            0.0,
            False,
            f"{index['type']} index of {items:,} items"
            + (
                f", recall@{recall['k']} vs exact {recall['recall']:.3f}"
                if recall["recall"] is not None
                else ""
            )
            + f", {size / 1e6:.1f} MB -> {out}",
            {"bundle": str(out), "manifest": manifest},
        )

    return run_or_reuse(state, "export", key, [out / "manifest.json"], run)


def stage_evaluate(state: PipelineState) -> StageRecord:
    from recsys.evaluate import evaluate_bundle, recall_headline, settings_from_config

    report_file = state.path(STAGE_DIR, "evaluation.json")
    stage_cfg = compose_stage(
        "evaluate",
        [
            f"bundle={quoted(state.path('bundle'))}",
            f"data={quoted(state.path(str(state.cfg.pipeline.retrieval_features)))}",
            f"out={quoted(report_file)}",
            f"seed={state.cfg.seed}",
            *state.cfg.pipeline.overrides.evaluate,
        ],
    )
    key = stage_key(settings_of(stage_cfg), state.keys["export"])

    def run() -> StageRecord:
        report = evaluate_bundle(settings_from_config(stage_cfg))
        return StageRecord(
            "evaluate",
            0.0,
            False,
            f"recall@{max(report['k'])}: {recall_headline(report)} ({report['users']:,} users)",
            {"report": report},
        )

    return run_or_reuse(state, "evaluate", key, [report_file], run)


def smoke_users(state: PipelineState, n: int) -> list[str]:
    """The `n` most active users of the raw training data (surely known to the bundle)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    users = pq.read_table(state.path("recsys2021", "train"), columns=["enaging_user_id"])
    counts = pc.value_counts(users["enaging_user_id"]).to_pylist()
    counts.sort(key=lambda c: (-c["counts"], c["values"]))
    return [c["values"] for c in counts[:n]]


def stage_serve(state: PipelineState) -> StageRecord:
    from serving.client import RecommenderClient
    from serving.server import start_background

    smoke = state.cfg.pipeline.smoke
    stage_cfg = compose_stage(
        "serve",
        [
            f"bundle={quoted(state.path('bundle'))}",
            "port=0",
            *state.cfg.pipeline.overrides.serve,
        ],
    )
    t = time.perf_counter()
    users = [*smoke_users(state, int(smoke.users)), str(smoke.unknown_user)]
    answers = []
    with start_background(stage_cfg) as server:
        started = time.perf_counter() - t
        target = f"127.0.0.1:{server.port}"
        log.info("  server up on %s in %.1f s", target, started)
        interrupts.pause_point("serve")
        with RecommenderClient(target) as client:
            for user in users:
                result = client.recommend(user, k=int(smoke.k))
                answers.append(
                    {
                        "user": user,
                        "items": list(result.items),
                        "scores": [round(float(s), 4) for s in result.scores],
                        "fallback": bool(result.fallback),
                        "model_version": result.model_version,
                        "ms": round(float(result.elapsed_ms), 2),
                    }
                )
    for answer in answers:
        log.info(format_answer(answer))
    latencies = sorted(a["ms"] for a in answers)
    return StageRecord(
        "serve",
        round(time.perf_counter() - t, 1),
        False,
        f"{len(answers)} Recommend calls on {target}, "
        f"latency {latencies[0]:.1f}-{latencies[-1]:.1f} ms",
        {"target": target, "answers": answers, "startup_seconds": round(started, 2)},
    )


def format_answer(answer: dict[str, Any]) -> str:
    shown = ", ".join(
        f"{item[:8]}.. {score:.3f}"
        for item, score in zip(answer["items"][:5], answer["scores"][:5], strict=True)
    )
    more = f" (+{len(answer['items']) - 5} more)" if len(answer["items"]) > 5 else ""
    flag = " [popularity fallback]" if answer["fallback"] else ""
    return f"  user {answer['user'][:12]}..{flag} ({answer['ms']:.1f} ms): {shown}{more}"


STAGE_FUNCTIONS: dict[str, Callable[[PipelineState], StageRecord]] = {
    "generate": stage_generate,
    "features": stage_features,
    "train": stage_train,
    "export": stage_export,
    "evaluate": stage_evaluate,
    "serve": stage_serve,
}


# ------------------------------------------------------------------ the job


def check_pipeline(cfg: DictConfig) -> None:
    check_ranges(cfg, PipelineError)  # model, trainer, backend: before generate and features run
    stages = list(cfg.pipeline.stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise PipelineError(
            f"pipeline.stages: unknown stage {unknown[0]!r} (known: {', '.join(STAGES)})"
        )
    if cfg.pipeline.rows < 1000:
        raise PipelineError(f"pipeline.rows must be at least 1000, got {cfg.pipeline.rows}")
    if cfg.pipeline.smoke.k < 1:
        raise PipelineError(f"pipeline.smoke.k must be >= 1, got {cfg.pipeline.smoke.k}")


def _state(cfg: DictConfig) -> PipelineState:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    choices = {g: str(hc.runtime.choices[g]) for g in ("model", "backend", "trainer")}
    return PipelineState(
        cfg=cfg,
        work_dir=Path(cfg.pipeline.work_dir),
        run_dir=Path(hc.runtime.output_dir),
        choices=choices,
        user_overrides=list(hc.overrides.task),
    )


def _key_only(state: PipelineState, name: str) -> None:
    """Fill in a skipped stage's keys from its marker so later stages can be reused."""
    names = {
        "generate": ["generate"],
        "features": ["features_ranker", "features_retrieval"],
        "train": ["train_ranker", "train_retrieval", "train_baseline"],
        "export": ["export"],
    }.get(name, [])
    for marker_name in names:
        marker = marker_path(state, marker_name)
        if marker.is_file():
            state.keys[marker_name] = json.loads(marker.read_text())["key"]


CONSOLE_LOGGERS = (
    "recsys.pipeline",
    "recsys.run_report",
    "recsys.train.run",
    "recsys.train.loop",
    "__main__",
)


class ConsoleFilter(logging.Filter):
    """The console shows the pipeline's own lines, training progress and any warning; every
    stage's detail still goes to the run's log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith(CONSOLE_LOGGERS)


def quiet_console() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            handler.addFilter(ConsoleFilter())


def run_pipeline(cfg: DictConfig) -> dict[str, StageRecord]:
    from recsys.features.spark import kill_spark, stop_spark
    from recsys.run_report import write_report

    t0 = time.perf_counter()
    quiet_console()
    state = _state(cfg)
    wanted = list(cfg.pipeline.stages)
    log.info(
        "pipeline: %s on %s rows -> %s (run directory %s)",
        " -> ".join(wanted),
        f"{cfg.pipeline.rows:,}",
        state.work_dir,
        state.run_dir,
    )
    try:
        for name in STAGES:
            if name not in wanted:
                _key_only(state, name)
                continue
            step = f"[{wanted.index(name) + 1}/{len(wanted)}] {name}"
            interrupts.install()  # whatever the last stage's libraries did to SIGINT
            log.info("%s ...", step)
            t = time.perf_counter()
            record = STAGE_FUNCTIONS[name](state)
            if name == "generate":
                mark_done(state, "generate", state.keys["generate"], record)
            state.records[name] = record
            if not record.reused:  # the report shows the same stage time as the console
                record.seconds = round(time.perf_counter() - t, 1)
            took = "reused" if record.reused else f"{record.seconds:.1f} s"
            log.info("%s done (%s): %s", step, took, record.line)
            if name == "features" and state.spark is not None:
                stop_spark(state.spark)  # training needs the memory more
                state.spark = None
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt) or interrupts.received():
            # also when Ctrl-C came while the session was starting (state.spark not set yet);
            # a graceful stop would wait on the interrupted py4j call
            kill_spark()
            state.spark = None
        raise
    finally:
        if state.spark is not None:
            stop_spark(state.spark)
    total = time.perf_counter() - t0
    report = write_report(state, total)
    log.info("pipeline finished in %.1f s; report: %s", total, report)
    return state.records


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="pipeline")
def main(cfg: DictConfig) -> None:
    run_task(run_pipeline, cfg, check=check_pipeline)


if __name__ == "__main__":
    main()
