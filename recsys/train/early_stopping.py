"""Early stopping on one metric with patience."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class EarlyStopping:
    """Tracks the best value of `metric`; `should_stop` after `patience` epochs without gain."""

    metric: str
    mode: str = "max"
    patience: int = 2
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"early stopping mode must be max or min, got {self.mode!r}")

    def improved(self, value: float) -> bool:
        if value is None or math.isnan(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def update(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Record this epoch's metrics; True when it is the best epoch so far."""
        if self.metric not in metrics:
            raise KeyError(f"early-stopping metric {self.metric!r} is not among {sorted(metrics)}")
        value = metrics[self.metric]
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = float(value), epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state(self) -> dict:
        return asdict(self)
