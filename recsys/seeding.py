"""One seeding function for every entry point and every worker."""

import logging
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def set_seed(seed: int, rank: int = 0) -> int:
    """Seed `random`, numpy and torch with `seed + rank`; return the seed used.

    Seed 0 is a seed like any other. The rank offset gives each data-parallel worker its own
    random stream (dropout, shuffling) while the run as a whole stays reproducible.
    """
    if seed is None or isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    used = seed + rank
    if not 0 <= used < 2**32:
        raise ValueError(f"seed + rank must be in [0, 2**32), got {used}")
    random.seed(used)
    np.random.seed(used)
    torch.manual_seed(used)
    log.info("seed %d (base %d, rank %d)", used, seed, rank)
    return used
