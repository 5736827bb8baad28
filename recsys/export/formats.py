"""Inference modules on disk, by format: one small interface for TorchScript and AOTInductor.

    save_module(module, example, path, fmt)   # -> ModuleReport (equality check on `example`)
    load_module(path, fmt)                     # -> a callable: features dict -> tensor

Every module takes `features: Dict[str, Tensor]` (the FeatureSpec's batch contract, first
dimension B) and returns a tensor whose first dimension is B; any B >= 1 works.

- `torchscript` (default): `torch.jit.script`, then `torch.jit.freeze` and
  `torch.jit.optimize_for_inference`, each kept only if the outputs on `example` stay within
  `atol` of the eager module (the report says which passes were kept). File: `<name>.pt`.
- `aoti`: `torch.export.export` with the batch dimension dynamic, compiled and packaged by
  AOTInductor (`torch._inductor.aoti_compile_and_package`), loaded with
  `torch._inductor.aoti_load_package`. File: `<name>.pt2`. Compiling takes a C++ compiler
  and tens of seconds.

Neither format is a pickle: a TorchScript archive holds code and tensors, an AOTI package a
shared library and weights.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from recsys.errors import RecsysError
from recsys.provenance import write_bytes

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "aoti")
SUFFIX = {"torchscript": ".pt", "aoti": ".pt2"}
ATOL = 1e-5

Features = dict[str, Tensor]
InferenceModule = Callable[[Features], Tensor]


class ExportFormatError(RecsysError):
    """An unknown format, or a module that cannot be exported in it."""


@dataclass
class ModuleReport:
    """What `save_module` did: file name, passes kept, max |exported - eager| on the example."""

    file: str
    format: str
    passes: list[str] = field(default_factory=list)
    max_abs_diff: float = 0.0
    example_rows: int = 0


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportFormatError(f"format {fmt!r} is not one of {FORMATS}")
    return fmt


def file_name(name: str, fmt: str) -> str:
    return name + SUFFIX[check_format(fmt)]


def _max_diff(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def save_module(
    module: nn.Module, example: Features, path: str | Path, fmt: str, atol: float = ATOL
) -> ModuleReport:
    """Export `module` (eval mode) to `path` in `fmt`; the saved file is reloaded and checked
    against the eager outputs on `example` (B >= 2 rows) and on its first row alone."""
    check_format(fmt)
    path = Path(path)
    module = module.eval()
    with torch.no_grad():
        expected = module(example)
    if fmt == "torchscript":
        report = _save_torchscript(module, example, expected, path, atol)
    else:
        report = _save_aoti(module, example, path)
    loaded = load_module(path, fmt)
    one = {k: v[:1] for k, v in example.items()}
    with torch.no_grad():
        diff = max(_max_diff(loaded(example), expected), _max_diff(loaded(one), module(one)))
    if not diff <= atol:
        raise ExportFormatError(
            f"{path.name}: the exported module's outputs differ from the eager module's by "
            f"{diff:.3g} (> {atol})"
        )
    report.max_abs_diff = diff
    report.example_rows = len(expected)
    return report


def _save_torchscript(
    module: nn.Module, example: Features, expected: Tensor, path: Path, atol: float
) -> ModuleReport:
    try:
        scripted = torch.jit.script(module)
    except Exception as e:  # TorchScript's frontend raises many error types
        raise ExportFormatError(f"cannot script {type(module).__name__}: {e}") from e
    best, passes = scripted.eval(), ["script"]
    candidates: list[tuple[str, Callable[[torch.jit.ScriptModule], torch.jit.ScriptModule]]] = [
        ("freeze", torch.jit.freeze),
        ("optimize_for_inference", torch.jit.optimize_for_inference),
    ]
    for name, apply in candidates:
        try:
            candidate = apply(best)
            with torch.no_grad():
                # twice: the profiling executor specialises on the first calls
                candidate(example)
                diff = _max_diff(candidate(example), expected)
        except Exception as e:
            log.warning("TorchScript pass %s skipped: %s", name, e)
            continue
        if diff <= atol:
            best, passes = candidate, [*passes, name]
        else:
            log.warning("TorchScript pass %s skipped: outputs moved by %.3g", name, diff)
    # through memory: TorchScript's zip writer aborts the process (a C++ exception in a
    # destructor) when a write to a file fails, e.g. on a full disk; Python raises OSError
    buffer = io.BytesIO()
    torch.jit.save(best, buffer)
    write_bytes(path, buffer.getvalue())
    return ModuleReport(file=path.name, format="torchscript", passes=passes)


def _save_aoti(module: nn.Module, example: Features, path: Path) -> ModuleReport:
    if len(next(iter(example.values()))) < 2:
        raise ExportFormatError("aoti export needs an example batch of at least 2 rows")
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    shapes = ({name: {0: batch} for name in example},)
    buffer = io.BytesIO()  # the package is written from Python, as TorchScript's above
    try:
        program = torch.export.export(module, (example,), dynamic_shapes=shapes, strict=False)
        torch._inductor.aoti_compile_and_package(program, package_path=buffer)
    except Exception as e:
        raise ExportFormatError(f"cannot export {type(module).__name__} with aoti: {e}") from e
    write_bytes(path, buffer.getvalue())
    return ModuleReport(file=path.name, format="aoti", passes=["export", "aoti_compile"])


def load_module(path: str | Path, fmt: str) -> InferenceModule:
    """A callable `features -> tensor` from a file written by `save_module`."""
    check_format(fmt)
    path = str(path)
    if fmt == "torchscript":
        module = torch.jit.load(path, map_location="cpu")
        module.eval()
        return module
    loaded = torch._inductor.aoti_load_package(path)

    def run(features: Features) -> Tensor:
        return loaded(features)

    return run
