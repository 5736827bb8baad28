"""Checkpoints: plain files that load with `torch.load(weights_only=True)` or as JSON.

A checkpoint directory holds
    model.pt           the model's state_dict (the inference module, not its train wrapper)
    wrapper.pt         state of the train wrapper beyond the model (e.g. logQ estimates)
    optimizer.pt       a list of optimizer state_dicts
    scheduler.pt       the learning-rate scheduler's state_dict (when there is one)
    state.json         epoch, metrics, early-stopping state, python/numpy RNG state of rank 0
    rng_rank<r>.pt     torch RNG state of worker r
    feature_spec.json  the spec the model was built from
    config.json        the resolved training config
Written to a temp directory and renamed, so a checkpoint is whole or absent.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.errors import RecsysError
from recsys.features.feature_spec import FeatureSpec
from recsys.provenance import copy_tree, temp_dir_for, write_bytes, write_json_atomic


class CheckpointError(RecsysError):
    """A missing or unreadable checkpoint; the message names the directory or file."""


def python_numpy_rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


def restore_python_numpy_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def write_checkpoint(
    directory: Path,
    *,
    model: torch.nn.Module,
    wrapper_extra: dict[str, torch.Tensor],
    optimizers: list[torch.optim.Optimizer],
    scheduler_state: Any | None,
    state: dict[str, Any],
    spec: FeatureSpec,
    config: dict[str, Any],
) -> Path:
    """Write rank 0's checkpoint files into a fresh `directory` (must not exist yet)."""
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        _save(model.state_dict(), tmp / "model.pt")
        _save(wrapper_extra, tmp / "wrapper.pt")
        _save([o.state_dict() for o in optimizers], tmp / "optimizer.pt")
        if scheduler_state is not None:
            _save(scheduler_state, tmp / "scheduler.pt")
        write_json_atomic(tmp / "state.json", {**state, "rng": python_numpy_rng_state()})
        spec.save(tmp)
        write_json_atomic(tmp / "config.json", config)
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _save(obj: Any, path: Path) -> None:
    """`torch.save` through memory: its zip writer, writing to a file, loses the errno of a
    failed write (a full disk), and may abort the process from a destructor."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def write_rank_rng(directory: Path, rank: int) -> None:
    _save(torch.get_rng_state(), directory / f"rng_rank{rank}.pt")


def _load(path: Path) -> Any:
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing") from None
    except Exception as e:
        raise CheckpointError(f"cannot load checkpoint file {path}: {e}") from e


def read_checkpoint(directory: str | Path) -> dict[str, Any]:
    """Everything `write_checkpoint` wrote, loaded safely (weights_only tensors, JSON)."""
    directory = Path(directory)
    if not (directory / "state.json").is_file():
        raise CheckpointError(f"no checkpoint in {directory} (state.json is missing)")
    loaded: dict[str, Any] = {
        "model": _load(directory / "model.pt"),
        "wrapper": _load(directory / "wrapper.pt"),
        "optimizers": _load(directory / "optimizer.pt"),
        "scheduler": _load(directory / "scheduler.pt")
        if (directory / "scheduler.pt").is_file()
        else None,
        "state": _load_json(directory / "state.json"),
        "spec": FeatureSpec.load(directory),
        "config": _load_json(directory / "config.json"),
    }
    return loaded


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint file {path} is not readable JSON: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint file {path} does not hold a JSON object")
    return data


def read_rank_rng(directory: Path, rank: int) -> torch.Tensor | None:
    path = Path(directory) / f"rng_rank{rank}.pt"
    return _load(path) if path.is_file() else None


def replace_dir(source: Path, target: Path) -> None:
    """Make `target` a copy of `source`, swapping it in with renames (whole or absent)."""
    with temp_dir_for(target) as tmp:
        copy_tree(source, tmp)
