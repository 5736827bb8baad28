"""The final score of a recommendation: retrieval and ranker scores blended by one weight.

The two-tower model and the ranker answer different questions: retrieval scores how likely a
user is to interact with an item at all, the ranker how likely an engagement is once the item
is shown. Which order serves held-out interactions best depends on the data, so the bundle
carries a `Blend` chosen on the validation split at export (`choose_weight`), and serving and
`recsys.evaluate` score with it:

    score = weight * (retrieval - mean_r) / std_r + (1 - weight) * (logit - mean_l) / std_l

The means and standard deviations are those of all validation candidates' scores, fixed in the
bundle, so two items' order never depends on which other candidates a request has (an
excluded item changes nothing else). Weight 1 is the retrieval order, 0 the ranker's; a bundle
without the entry (older exports) uses 0, its old behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.errors import RecsysError

WEIGHTS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
"""The weights tried at export (0, 0.1, ..., 1)."""


@dataclass
class BlendSettings:
    """How export sets the weight (conf/export.yaml `blend` describes each knob)."""

    weight: float | None = None  # None: chosen on `split`
    split: str = "valid"
    k: int = 50
    candidates: int = 200
    max_users: int | None = 1000
    seed: int = 0
    exclude_train: bool = True
    # the index's popularity prior (recsys/export/prior.py); None: chosen on `split`
    prior_beta: float | None = None

    def validate(self) -> None:
        if self.weight is not None and not 0.0 <= self.weight <= 1.0:
            raise RecsysError(f"blend.weight must be null or in [0, 1], got {self.weight}")
        if self.k < 1 or self.candidates < self.k:
            raise RecsysError(
                f"blend.k must be >= 1 and blend.candidates >= blend.k, got {self.k} and "
                f"{self.candidates}"
            )
        if self.max_users is not None and self.max_users < 1:
            raise RecsysError(f"blend.max_users must be null or >= 1, got {self.max_users}")
        if self.prior_beta is not None and not self.prior_beta >= 0:
            raise RecsysError(f"blend.prior_beta must be null or >= 0, got {self.prior_beta}")


@dataclass(frozen=True)
class Blend:
    """A bundle's final-score rule (the manifest's `blend` entry holds these fields)."""

    weight: float = 0.0
    retrieval_mean: float = 0.0
    retrieval_std: float = 1.0
    ranker_mean: float = 0.0
    ranker_std: float = 1.0

    @classmethod
    def fitted(cls, weight: float, retrieval: np.ndarray, ranker: np.ndarray) -> Blend:
        """The scales of these candidate scores (non-finite entries are padding)."""
        r = retrieval[np.isfinite(retrieval)]
        k = ranker[np.isfinite(ranker)]
        return cls(
            weight=float(weight),
            retrieval_mean=float(r.mean()) if r.size else 0.0,
            retrieval_std=float(r.std()) if r.size and r.std() > 0 else 1.0,
            ranker_mean=float(k.mean()) if k.size else 0.0,
            ranker_std=float(k.std()) if k.size and k.std() > 0 else 1.0,
        )

    @classmethod
    def of_manifest(cls, manifest: Mapping[str, Any]) -> Blend:
        entry = manifest.get("blend")
        if not isinstance(entry, Mapping):
            return cls()
        return cls(**{k: float(entry[k]) for k in cls.__dataclass_fields__ if k in entry})

    def scores(self, retrieval: np.ndarray, ranker: np.ndarray) -> np.ndarray:
        """Final scores (any shape; float32); -inf where either input is not finite."""
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"blend weight must be in [0, 1], got {self.weight}")
        r = (retrieval.astype(np.float64) - self.retrieval_mean) / self.retrieval_std
        k = (ranker.astype(np.float64) - self.ranker_mean) / self.ranker_std
        with np.errstate(invalid="ignore"):
            score = self.weight * r + (1 - self.weight) * k
        ok = np.isfinite(retrieval) & np.isfinite(ranker)
        return np.where(ok, score, -np.inf).astype(np.float32)


def choose_weight(
    metric_at: Callable[[float], float], weights: Sequence[float] = WEIGHTS
) -> tuple[float, dict[float, float]]:
    """The weight with the best `metric_at(weight)` (the validation metric) and every
    weight's value; ties go to the larger weight (the simpler retrieval order)."""
    values = {w: float(metric_at(w)) for w in weights}
    best = max(values, key=lambda w: (values[w], w))
    return best, values
