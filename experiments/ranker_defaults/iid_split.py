"""Split a generated data set's train rows into train/ and valid/ row by row (seeded), so
that `recsys.preprocess` keeps the parts as they are.

    python experiments/ranker_defaults/iid_split.py data/recsys2021 data/recsys2021_iid

Why: preprocess's `split.method=random` draws each row's split from a hash of its content,
so identical rows share one split. In generated RecSys 2021 data about a fifth (100,000 rows)
to a third (1,000,000 rows) of the rows have an identical twin, and all of them are
negatives (an engagement carries a random timestamp, so engaged rows never repeat). Whole
groups of repeated negatives then land in valid or not at all, which makes the validation
split unlike the generator's own test split (drawn row by row) and penalises models that
learn tweet- or pair-level signal. This script draws every row on its own, as the generator
draws its test rows.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="generated data (train/, test/)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train = pq.read_table(args.src / "train")
    is_valid = np.random.default_rng(args.seed).random(train.num_rows) < args.valid_fraction
    args.out.mkdir(parents=True)
    for split, mask in (("train", ~is_valid), ("valid", is_valid)):
        (args.out / split).mkdir()
        pq.write_table(train.filter(mask), args.out / split / "part-00000.parquet")
    shutil.copytree(args.src / "test", args.out / "test")
    print(f"train {int((~is_valid).sum()):,} / valid {int(is_valid.sum()):,} rows -> {args.out}")


if __name__ == "__main__":
    main()
