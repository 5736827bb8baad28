"""Seeded generator of data in the Criteo display-ads layout: label, I1..I13, C1..C26.

It stands in for the Criteo logs, which are too large to ship and need an account to fetch, so
the Criteo feature set and reader can be tested from a clean clone. The shape follows the
real data:

- `label`: 0 or 1 (a click), about a quarter of the rows 1;
- `I1`..`I13`: non-negative integer counts with a long tail (log-normal), each column with its
  own share of missing values; `I2` is never missing and holds the only negative values, the
  occasional -1 and the rare -2, as in the real logs;
- `C1`..`C26`: 8 lower-case hex characters (a 32-bit hash), each column with its own
  vocabulary size and Zipf-like frequencies (value of rank k drawn with weight (k + 1) ** -s);
  some columns go missing together, as the real ones do.

The label is drawn from a planted model over the written columns (a seeded effect for each value
of C1, C6, C9, C14, C17 and C23; the log of I1, I7, I11 and I13), so there is something to learn,
and `CriteoRows.probability` holds each row's true click probability.

Two layouts, named after the dataset configs that read them:

- `criteo` (conf/dataset/criteo.yaml): the original Kaggle / Terabyte files, tab-separated, no
  header, counts as integers, an empty field for a missing value;
- `criteo_sample` (conf/dataset/criteo_sample.yaml): the layout of the 200-row sample
  circulated with the DeepCTR examples, comma-separated with a header line. Counts are written
  the way pandas writes them: a column that can hold missing values as a float ("260.0"),
  `I2` (never missing) as an integer.

Rows depend only on (rows, seed), and each column comes from its own stream, so the first n rows
of a longer draw are the n rows of a shorter one. The repository ships a 200-row sample written
by it (`SAMPLE_PATH`); a unit test checks that it is exactly what this module writes:

    python -m recsys.data.criteo_format --rows 200 --seed 0 --layout criteo_sample \\
        --out recsys/data/samples/criteo_sample.txt
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from recsys.data.generator import roc_auc
from recsys.provenance import new_temp_file

Layout = Literal["criteo", "criteo_sample"]
LAYOUTS: tuple[Layout, ...] = ("criteo", "criteo_sample")

COUNT_COLUMNS = tuple(f"I{i}" for i in range(1, 14))
CATEGORY_COLUMNS = tuple(f"C{i}" for i in range(1, 27))
COLUMNS = ("label", *COUNT_COLUMNS, *CATEGORY_COLUMNS)

SAMPLE_ROWS = 200
SAMPLE_SEED = 0
SAMPLE_PATH = Path(__file__).resolve().parent / "samples" / "criteo_sample.txt"


@dataclass(frozen=True)
class CountColumn:
    """log1p(count) ~ Normal(mu, sigma), floored; missing with probability `missing` (shared by
    the columns of one `group`, so they go missing on the same rows)."""

    mu: float
    sigma: float
    missing: float
    group: str | None = None


@dataclass(frozen=True)
class CategoryColumn:
    """`vocabulary` values with weight (rank + 1) ** -zipf; missing as in `CountColumn`."""

    vocabulary: int
    zipf: float
    missing: float
    group: str | None = None


# Shares of missing values and scales after the public Kaggle training data (I5 runs to about
# 1e6, I12 is mostly missing, I1 and I10 go missing together); rounded, not fitted.
COUNTS: dict[str, CountColumn] = {
    "I1": CountColumn(0.8, 1.0, 0.45, "i1_i10"),
    "I2": CountColumn(1.8, 1.6, 0.0),
    "I3": CountColumn(2.0, 1.3, 0.2, "i3_i4_i13"),
    "I4": CountColumn(1.8, 0.9, 0.2, "i3_i4_i13"),
    "I5": CountColumn(7.8, 2.0, 0.03),
    "I6": CountColumn(3.6, 1.7, 0.22),
    "I7": CountColumn(1.2, 1.2, 0.04, "i7_i9_i11"),
    "I8": CountColumn(2.3, 1.1, 0.0005),
    "I9": CountColumn(3.7, 1.4, 0.04, "i7_i9_i11"),
    "I10": CountColumn(0.4, 0.5, 0.45, "i1_i10"),
    "I11": CountColumn(1.0, 0.8, 0.04, "i7_i9_i11"),
    "I12": CountColumn(0.3, 0.9, 0.77),
    "I13": CountColumn(1.8, 1.0, 0.2, "i3_i4_i13"),
}
I2_MINUS_ONE = 0.1  # share of I2 written as -1
I2_MINUS_TWO = 0.005  # and as -2

CATEGORIES: dict[str, CategoryColumn] = {
    "C1": CategoryColumn(1_400, 1.6, 0.0),
    "C2": CategoryColumn(550, 1.1, 0.0),
    "C3": CategoryColumn(100_000, 1.05, 0.03, "c3_group"),
    "C4": CategoryColumn(60_000, 1.05, 0.03, "c3_group"),
    "C5": CategoryColumn(300, 1.9, 0.0),
    "C6": CategoryColumn(24, 1.5, 0.12),
    "C7": CategoryColumn(12_000, 1.0, 0.0),
    "C8": CategoryColumn(630, 1.8, 0.0),
    "C9": CategoryColumn(3, 2.5, 0.0),
    "C10": CategoryColumn(90_000, 1.05, 0.0),
    "C11": CategoryColumn(5_600, 1.0, 0.0),
    "C12": CategoryColumn(80_000, 1.05, 0.03, "c3_group"),
    "C13": CategoryColumn(3_200, 1.0, 0.0),
    "C14": CategoryColumn(27, 1.4, 0.0),
    "C15": CategoryColumn(14_000, 1.0, 0.0),
    "C16": CategoryColumn(90_000, 1.05, 0.03, "c3_group"),
    "C17": CategoryColumn(10, 1.5, 0.0),
    "C18": CategoryColumn(5_600, 1.1, 0.0),
    "C19": CategoryColumn(2_100, 1.6, 0.44, "c19_group"),
    "C20": CategoryColumn(3, 0.8, 0.44, "c19_group"),
    "C21": CategoryColumn(90_000, 1.05, 0.03, "c3_group"),
    "C22": CategoryColumn(18, 1.2, 0.76),
    "C23": CategoryColumn(15, 1.5, 0.0),
    "C24": CategoryColumn(60_000, 1.1, 0.03, "c3_group"),
    "C25": CategoryColumn(105, 1.3, 0.44, "c19_group"),
    "C26": CategoryColumn(40_000, 1.1, 0.44, "c19_group"),
}

# The planted click model: logit = BASE_LOGIT + sum of value effects (Normal(0, sd) per value of
# a category, less their mean over the column's frequencies; 0 when missing) + sum of
# weight x (log1p(count) - mu) / sigma (0 when missing).
BASE_LOGIT = -1.5
CATEGORY_EFFECT_SD = {"C1": 0.6, "C6": 0.5, "C9": 0.4, "C14": 0.7, "C17": 0.5, "C23": 0.6}
COUNT_WEIGHTS = {"I1": 0.5, "I7": 0.35, "I11": -0.4, "I13": -0.25}


@dataclass(frozen=True)
class CriteoRows:
    """Generated rows, column-wise. B = rows."""

    label: np.ndarray  # B, int8 in {0, 1}
    counts: np.ndarray  # B x 13, float64; NaN = missing
    categories: np.ndarray  # B x 26, str (8 hex characters; "" = missing)
    probability: np.ndarray  # B, float64: the true click probability of each row

    def __len__(self) -> int:
        return len(self.label)


def _stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def _missing(
    seed: int,
    rows: int,
    groups: dict[str, np.ndarray],
    name: str,
    column: CountColumn | CategoryColumn,
) -> np.ndarray:
    """Where a column is missing: one draw per group, shared by the group's columns."""
    key = column.group or name
    if key not in groups:
        # a stream per group name, so that adding a column never reshuffles another
        stream = _stream(seed, 1, int.from_bytes(key.encode(), "little") % (2**31))
        groups[key] = stream.random(rows)
    return groups[key] < column.missing


def _hex_names(seed: int, index: int, ranks: np.ndarray) -> np.ndarray:
    """8-hex-character names of the values of rank `ranks` in category column `index`.

    A keyed 32-bit bijection of the rank (murmur3's finaliser, each step invertible), so names
    never collide within a column and only the values drawn are named: the large columns have
    up to 100,000 values, and naming all of them would dominate the time of a small sample.
    """
    key = int(_stream(seed, 2, index).integers(2**32))
    h = (ranks.astype(np.uint64) ^ np.uint64(key)) & np.uint64(0xFFFFFFFF)
    for shift, multiplier in ((16, 0x85EBCA6B), (13, 0xC2B2AE35), (16, None)):
        h ^= h >> np.uint64(shift)
        if multiplier is not None:
            h = (h * np.uint64(multiplier)) & np.uint64(0xFFFFFFFF)
    return np.array([f"{int(v):08x}" for v in h], dtype=object)


def _zipf_probabilities(vocabulary: int, s: float) -> np.ndarray:
    weights = np.arange(1, vocabulary + 1, dtype=np.float64) ** -s
    return weights / weights.sum()


def _zipf_ranks(stream: np.random.Generator, rows: int, probabilities: np.ndarray) -> np.ndarray:
    cumulative = np.cumsum(probabilities)
    ranks = np.searchsorted(cumulative, stream.random(rows) * cumulative[-1], side="right")
    return np.minimum(ranks, len(probabilities) - 1)


def generate(rows: int, seed: int = SAMPLE_SEED) -> CriteoRows:
    """`rows` rows of Criteo-layout data, a function of (rows, seed) only."""
    if rows < 0:
        raise ValueError(f"rows={rows} must be >= 0")
    groups: dict[str, np.ndarray] = {}
    logit = np.full(rows, BASE_LOGIT)

    counts = np.empty((rows, len(COUNT_COLUMNS)))
    for j, name in enumerate(COUNT_COLUMNS):
        spec = COUNTS[name]
        z = _stream(seed, 3, j + 1).standard_normal(rows)
        values = np.maximum(np.floor(np.expm1(spec.mu + spec.sigma * z)), 0.0)
        if name == "I2":
            u = _stream(seed, 7).random(rows)
            values[u < I2_MINUS_ONE] = -1.0
            values[u < I2_MINUS_TWO] = -2.0
        missing = _missing(seed, rows, groups, name, spec)
        values[missing] = np.nan
        counts[:, j] = values
        if name in COUNT_WEIGHTS:
            scaled = (np.log1p(np.maximum(values, 0.0)) - spec.mu) / spec.sigma
            logit += COUNT_WEIGHTS[name] * np.where(missing, 0.0, scaled)

    categories = np.empty((rows, len(CATEGORY_COLUMNS)), dtype=object)
    for j, name in enumerate(CATEGORY_COLUMNS):
        spec = CATEGORIES[name]
        probabilities = _zipf_probabilities(spec.vocabulary, spec.zipf)
        ranks = _zipf_ranks(_stream(seed, 4, j + 1), rows, probabilities)
        missing = _missing(seed, rows, groups, name, spec)
        used, inverse = np.unique(ranks, return_inverse=True)
        column = _hex_names(seed, j + 1, used)[inverse]
        column[missing] = ""
        categories[:, j] = column
        if name in CATEGORY_EFFECT_SD:
            sd = CATEGORY_EFFECT_SD[name]
            effects = _stream(seed, 5, j + 1).normal(0.0, sd, spec.vocabulary)
            # centred on the column's average row, so the click rate stays near the base
            # rate whatever effect the seed gives the few values that fill most rows
            effects -= effects @ probabilities
            logit += np.where(missing, 0.0, effects[ranks])

    probability = 1.0 / (1.0 + np.exp(-logit))
    label = (_stream(seed, 6).random(rows) < probability).astype(np.int8)
    return CriteoRows(label, counts, categories.astype(str), probability)


def _count_text(value: float, as_float: bool) -> str:
    if np.isnan(value):
        return ""
    return f"{value:.1f}" if as_float else str(int(value))


def lines(data: CriteoRows, layout: Layout) -> Iterator[str]:
    """The rows as text lines (without line ends) in `layout`, header first if it has one."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    sep = "\t" if layout == "criteo" else ","
    if layout == "criteo_sample":
        yield sep.join(COLUMNS)
    # pandas writes a column that holds a missing value as floats: every count column of the
    # full data but I2
    as_float = [layout == "criteo_sample" and COUNTS[c].missing > 0 for c in COUNT_COLUMNS]
    for i in range(len(data)):
        counts = (_count_text(v, f) for v, f in zip(data.counts[i], as_float, strict=True))
        yield sep.join((str(int(data.label[i])), *counts, *data.categories[i]))


def write(path: Path, rows: int, seed: int = SAMPLE_SEED, layout: Layout = "criteo") -> Path:
    """Write `rows` generated rows to `path` in `layout`: whole or not at all (temp + rename)."""
    return write_rows(path, generate(rows, seed), layout)


def write_rows(path: Path, data: CriteoRows, layout: Layout = "criteo") -> Path:
    """Write generated `data` to `path` in `layout`: whole or not at all (temp + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_temp_file(path.parent, f".{path.name}.")  # mkstemp's would be 0600
    try:
        with os.fdopen(fd, "w", newline="\n") as f:
            for line in lines(data, layout):
                f.write(line + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recsys.data.criteo_format",
        description="Write seeded data in the Criteo layout (label, I1..I13, C1..C26).",
    )
    parser.add_argument("--rows", type=int, default=SAMPLE_ROWS)
    parser.add_argument("--seed", type=int, default=SAMPLE_SEED)
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="criteo",
        help="criteo: tab-separated, no header (dataset=criteo); "
        "criteo_sample: comma-separated with a header (dataset=criteo_sample)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the file to write")
    args = parser.parse_args(argv)
    if args.rows < 0:
        parser.error(f"--rows={args.rows} must be >= 0")
    data = generate(args.rows, args.seed)
    data_path = write_rows(args.out, data, args.layout)
    print(f"{args.rows:,} rows (seed {args.seed}, layout {args.layout}) -> {data_path}")
    # the AUC of the planted click probabilities: what no model can beat on these rows
    best = roc_auc(data.label, data.probability)
    if best is not None:
        print(f"click rate {data.label.mean():.1%}, true-probability AUC {best:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
