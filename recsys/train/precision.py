"""Numeric precision of training: fp32, bf16 autocast, the `auto` choice, and the IPEX check."""

import contextlib
import importlib.metadata
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from recsys.errors import RecsysError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "auto")
IPEX_PACKAGE = "intel-extension-for-pytorch"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags of the first processor listed (empty when unreadable)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(name: str, flags: set[str] | None = None) -> tuple[str, str]:
    """(fp32 | bf16, why). `auto` picks bf16 only with AMX: without it (avx512_bf16 alone)
    bf16 matrix work measured about half as fast as fp32 on this project's machines."""
    if name not in PRECISIONS:
        raise RecsysError(f"trainer.precision must be one of {PRECISIONS}, got {name!r}")
    if name != "auto":
        return name, "set in the config"
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "bf16", "auto: the CPU has AMX (amx_bf16)"
    if "avx512_bf16" in flags:
        extra = ", and avx512_bf16 alone is slower than fp32"
    else:
        extra = " nor avx512_bf16 (bf16 matrix work falls back to a slow path)"
    return "fp32", f"auto: no AMX on this CPU{extra}"


@contextlib.contextmanager
def autocast(precision: str) -> Iterator[None]:
    """Forward and loss under bf16 autocast (fp32 master weights stay fp32), or nothing."""
    if precision == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    else:
        yield


def check_ipex() -> str:
    """The IPEX version when a build matching the installed torch imports; else a clear error."""
    torch_version = torch.__version__.split("+")[0]
    try:
        ipex_version = importlib.metadata.version(IPEX_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise RecsysError(
            f"backend.ipex=true needs {IPEX_PACKAGE} built for torch {torch_version}, and none "
            "is installed (its last release, 2.8, pairs with torch 2.8; `pip install .[ipex]` "
            "only helps with a matching torch)"
        ) from None
    if ipex_version.split(".")[:2] != torch_version.split(".")[:2]:
        raise RecsysError(
            f"backend.ipex=true: {IPEX_PACKAGE} {ipex_version} does not match torch "
            f"{torch_version} (IPEX 2.8, the last release, pairs with torch 2.8)"
        )
    try:
        import intel_extension_for_pytorch  # noqa: F401
    except Exception as e:  # an IPEX build that fails to import is as good as none
        raise RecsysError(
            f"backend.ipex=true: {IPEX_PACKAGE} {ipex_version} fails to import: {e}"
        ) from e
    return ipex_version


def apply_ipex(model: torch.nn.Module, optimizer: torch.optim.Optimizer, precision: str):
    """`ipex.optimize(model, optimizer, dtype)`; call `check_ipex()` first."""
    import intel_extension_for_pytorch as ipex

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return ipex.optimize(model, optimizer=optimizer, dtype=dtype)
