import random

import numpy as np
import pytest
import torch

from recsys.seeding import set_seed


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_same_seed_same_draws_everywhere() -> None:
    assert set_seed(7) == 7
    first = _draws()
    set_seed(7)
    assert _draws() == first


def test_seed_zero_is_a_seed() -> None:
    assert set_seed(0) == 0
    zero = _draws()
    set_seed(1)
    one = _draws()
    set_seed(0)
    assert _draws() == zero
    assert zero != one


def test_rank_offsets_the_seed() -> None:
    assert set_seed(10, rank=3) == 13
    rank3 = _draws()
    set_seed(13)
    assert _draws() == rank3
    set_seed(10, rank=0)
    assert _draws() != rank3


@pytest.mark.parametrize("bad", [None, "1", 1.5, True])
def test_non_integer_seeds_are_refused(bad: object) -> None:
    with pytest.raises(TypeError):
        set_seed(bad)  # type: ignore[arg-type]


def test_negative_rank_is_refused() -> None:
    with pytest.raises(ValueError):
        set_seed(1, rank=-1)
