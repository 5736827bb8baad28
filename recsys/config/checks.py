"""Range checks of config values, run by each entry point's check hook before any work.

The structured configs in `schema.py` check keys and types when Hydra composes; a value in
the wrong range (`model.embedding_dim=0`, `trainer.lr=-1`, `model.dropout=1`) composes fine
and would only fail, or worse train, much later. Each group has one function listing what is
wrong with its node; `check_ranges` runs those of every group a config holds and raises one
error naming each bad key, its value and the allowed range, on one line.

Checks go by key, not by model class: a new model whose schema reuses `embedding_dim`,
`hidden_units` or `dropout` is checked without a line here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recsys.errors import RecsysError

# Spark's setLogLevel accepts these (any case); anything else fails after the JVM started
SPARK_LOG_LEVELS = ("ALL", "DEBUG", "ERROR", "FATAL", "INFO", "OFF", "TRACE", "WARN")
DATA_FORMATS = ("parquet", "csv")  # what recsys.features.source reads


class ConfigValueError(RecsysError, ValueError):
    """A config value outside its allowed range (the message names the key and the range)."""


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _at_least(node: Mapping[str, Any], key: str, where: str, low: int) -> list[str]:
    """`node[key]` must be an integer >= low (null allowed only where the schema allows it:
    a null reaching here is an optional knob left unset)."""
    value = node.get(key)
    if value is None or (_number(value) and value >= low):
        return []
    return [f"{where}.{key} must be >= {low}, got {value!r}"]


def _positive(node: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = node.get(key)
    if value is None or (_number(value) and math.isfinite(value) and value > 0):
        return []
    return [f"{where}.{key} must be > 0, got {value!r}"]


def _not_negative(node: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = node.get(key)
    if value is None or (_number(value) and math.isfinite(value) and value >= 0):
        return []
    return [f"{where}.{key} must be >= 0, got {value!r}"]


def _sizes(node: Mapping[str, Any], key: str, where: str, empty_ok: bool) -> list[str]:
    values = node.get(key)
    if values is None:
        return []
    sizes = list(values)
    if not sizes and not empty_ok:
        return [f"{where}.{key} must list at least one size, got []"]
    if all(_number(u) and u >= 1 for u in sizes):
        return []
    return [f"{where}.{key} must list sizes >= 1, got {sizes}"]


def model_problems(model: Mapping[str, Any], where: str = "model") -> list[str]:
    """Embedding and layer sizes >= 1, dropout in [0, 1), temperature > 0, embedding_l2 >= 0."""
    problems = _at_least(model, "embedding_dim", where, 1)
    for name, dim in (model.get("embedding_dims") or {}).items():
        if not (_number(dim) and dim >= 1):
            problems.append(f"{where}.embedding_dims.{name} must be >= 1, got {dim!r}")
    problems += _sizes(model, "hidden_units", where, empty_ok=True)  # [] = no hidden layer
    problems += _sizes(model, "tower_units", where, empty_ok=False)  # last = output size
    dropout = model.get("dropout")
    if dropout is not None and not (_number(dropout) and 0.0 <= dropout < 1.0):
        problems.append(f"{where}.dropout must be in [0, 1), got {dropout!r}")
    problems += _positive(model, "temperature", where)
    problems += _not_negative(model, "embedding_l2", where)
    return problems


def trainer_problems(trainer: Mapping[str, Any], where: str = "trainer") -> list[str]:
    """Epochs, batch sizes, K and step caps >= 1; lr > 0; weight decay and patience >= 0."""
    problems = []
    for key in ("epochs", "batch_size", "eval_batch_size", "retrieval_k", "max_steps_per_epoch"):
        problems += _at_least(trainer, key, where, 1)
    problems += _positive(trainer, "lr", where)
    problems += _not_negative(trainer, "weight_decay", where)
    problems += _not_negative(trainer, "patience", where)  # 0 = never stop early
    return problems


def backend_problems(backend: Mapping[str, Any], where: str = "backend") -> list[str]:
    """Workers and CPUs per worker >= 1; Ray's max_failures >= -1 (-1: retry forever)."""
    problems = _at_least(backend, "num_workers", where, 1)
    problems += _at_least(backend, "cpus_per_worker", where, 1)
    problems += _at_least(backend, "max_failures", where, -1)
    return problems


def spark_problems(spark: Mapping[str, Any], where: str = "spark") -> list[str]:
    """Cores and shuffle partitions >= 1 when set; a log level Spark knows."""
    problems = _at_least(spark, "cores", where, 1)
    problems += _at_least(spark, "shuffle_partitions", where, 1)
    level = spark.get("log_level")
    if level is not None and str(level).upper() not in SPARK_LOG_LEVELS:
        problems.append(
            f"{where}.log_level must be one of {', '.join(SPARK_LOG_LEVELS)}, got {level!r}"
        )
    return problems


def dataset_problems(dataset: Mapping[str, Any], where: str = "dataset") -> list[str]:
    """A data format the readers know and a CSV separator that is not empty."""
    problems = []
    fmt = dataset.get("format")
    if fmt is not None and fmt not in DATA_FORMATS:
        problems.append(f"{where}.format must be one of {', '.join(DATA_FORMATS)}, got {fmt!r}")
    if "sep" in dataset and not dataset.get("sep"):
        problems.append(f"{where}.sep must be one or more characters, got {dataset.get('sep')!r}")
    return problems


GROUP_CHECKS: dict[str, Callable[[Mapping[str, Any], str], list[str]]] = {
    "dataset": dataset_problems,
    "model": model_problems,
    "trainer": trainer_problems,
    "backend": backend_problems,
    "spark": spark_problems,
}
"""Top-level key of a primary config -> the check of its node."""


def _plain(node: Any) -> Any:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    return node


def config_problems(cfg: Mapping[str, Any], groups: Iterable[str] | None = None) -> list[str]:
    """What is out of range in the `groups` of `cfg` (default: every group it holds)."""
    problems = []
    for group in GROUP_CHECKS if groups is None else groups:
        node = cfg.get(group) if group in cfg else None
        if isinstance(node, Mapping | DictConfig):
            problems += GROUP_CHECKS[group](_plain(node), group)
    return problems


def check_ranges(
    cfg: Mapping[str, Any],
    error: type[RecsysError] = ConfigValueError,
    groups: Iterable[str] | None = None,
) -> None:
    """Raise `error` naming every out-of-range value of `cfg`'s groups, on one line.

    Entry points pass their own error class (TrainConfigError, PipelineError, ...) so that
    callers catching it keep working; all of them are RecsysErrors (exit code 2).
    """
    problems = config_problems(cfg, groups)
    if problems:
        raise error("; ".join(problems))
