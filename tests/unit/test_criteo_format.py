"""The seeded Criteo-layout generator, and the 200-row sample the repository ships from it."""

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from recsys.config import CONF_DIR, register_configs
from recsys.data import criteo_format
from recsys.data.criteo_format import (
    CATEGORY_COLUMNS,
    COLUMNS,
    COUNT_COLUMNS,
    SAMPLE_PATH,
    SAMPLE_ROWS,
    SAMPLE_SEED,
    generate,
    write,
)
from recsys.data.generator import roc_auc

register_configs()
REPO = Path(__file__).resolve().parents[2]
HEX8 = re.compile(r"[0-9a-f]{8}")
REGENERATE = (
    "python -m recsys.data.criteo_format --rows 200 --seed 0 --layout criteo_sample "
    "--out recsys/data/samples/criteo_sample.txt"
)


@pytest.fixture(scope="module")
def big() -> criteo_format.CriteoRows:
    return generate(20_000, seed=1)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC with ties ranked by their mean rank."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    positives = labels == 1
    n1, n0 = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def test_the_same_seed_gives_the_same_rows_and_another_seed_others() -> None:
    a, b, c = generate(300, seed=7), generate(300, seed=7), generate(300, seed=8)
    for field in ("label", "counts", "categories", "probability"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.categories, c.categories)
    assert not np.array_equal(a.probability, c.probability)


def test_a_longer_draw_starts_with_the_shorter_one() -> None:
    short, long = generate(50, seed=3), generate(400, seed=3)
    np.testing.assert_array_equal(short.counts, long.counts[:50])
    np.testing.assert_array_equal(short.categories, long.categories[:50])
    np.testing.assert_array_equal(short.label, long.label[:50])


def test_both_layouts_hold_the_same_rows(tmp_path: Path) -> None:
    data = generate(120, seed=2)
    sample = write(tmp_path / "sample.txt", 120, seed=2, layout="criteo_sample")
    tsv = write(tmp_path / "criteo.txt", 120, seed=2, layout="criteo")

    with sample.open(newline="") as f:
        sample_rows = list(csv.reader(f))
    assert sample_rows[0] == list(COLUMNS) and len(COLUMNS) == 40
    sample_rows = sample_rows[1:]
    tsv_rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    assert len(sample_rows) == len(tsv_rows) == 120
    assert {len(r) for r in sample_rows} == {len(r) for r in tsv_rows} == {40}

    for s_row, t_row, label, counts, categories in zip(
        sample_rows, tsv_rows, data.label, data.counts, data.categories, strict=True
    ):
        assert s_row[0] == t_row[0] == str(label)
        for s, t, value in zip(s_row[1:14], t_row[1:14], counts, strict=True):
            assert "." not in t  # the original layout writes integer counts
            if np.isnan(value):
                assert s == t == ""
            else:
                assert float(s) == float(t) == value
        assert s_row[14:] == t_row[14:] == list(categories)
    # pandas' way, as in the DeepCTR sample: I2 (never missing) as integers, the rest floats
    assert all("." not in r[2] for r in sample_rows)
    assert all(r[3].endswith(".0") for r in sample_rows if r[3])


def test_values_missing_values_and_the_odd_negative_count(big) -> None:
    counts, categories = big.counts, big.categories
    assert set(np.unique(big.label)) == {0, 1}
    missing_counts = np.isnan(counts).mean(axis=0)
    assert missing_counts[COUNT_COLUMNS.index("I2")] == 0.0
    assert (missing_counts[[COUNT_COLUMNS.index(c) for c in ("I1", "I10", "I12")]] > 0.3).all()
    assert (missing_counts > 0).sum() == 12
    present = counts[~np.isnan(counts)]
    assert present.min() == -2.0 and (present == np.floor(present)).all()
    negatives = counts[:, COUNT_COLUMNS.index("I2")] < 0
    assert 0.05 < negatives.mean() < 0.2
    assert (np.nan_to_num(np.delete(counts, COUNT_COLUMNS.index("I2"), axis=1)) >= 0).all()
    assert np.nanmax(counts[:, COUNT_COLUMNS.index("I5")]) > 1e5  # a long tail

    empty = categories == ""
    assert empty.any(axis=0).sum() >= 10 and not empty.all(axis=0).any()
    assert all(HEX8.fullmatch(v) for v in np.unique(categories[~empty]))
    # C19, C20, C25 and C26 go missing on the same rows, as in the real logs
    group = [CATEGORY_COLUMNS.index(c) for c in ("C19", "C20", "C25", "C26")]
    assert (empty[:, group] == empty[:, group[:1]]).all() and empty[:, group[0]].mean() > 0.3


def test_categories_have_zipf_like_frequencies(big) -> None:
    def frequencies(name: str) -> np.ndarray:
        column = big.categories[:, CATEGORY_COLUMNS.index(name)]
        return np.sort(np.unique(column[column != ""], return_counts=True)[1])[::-1]

    c9 = frequencies("C9")
    assert len(c9) == 3 and c9[0] > 0.7 * c9.sum()
    for name, few, many in (("C1", 100, 1_400), ("C3", 3_000, 100_000)):
        counts = frequencies(name)
        assert few <= len(counts) <= many, name
        # a few head values hold much of the column, and most values are rare
        assert counts[0] > 0.05 * counts.sum() and np.median(counts) <= 2, name


def test_the_label_follows_the_planted_model_and_is_learnable(big) -> None:
    assert 0.2 < big.label.mean() < 0.3  # about Criteo's click rate
    assert _auc(big.label, big.probability) > 0.7
    # learnable from the written values: C14's click rate per value, measured on one half,
    # ranks the other half's rows
    c14 = big.categories[:, CATEGORY_COLUMNS.index("C14")]
    half = len(c14) // 2
    values, inverse = np.unique(c14, return_inverse=True)
    clicks = np.bincount(inverse[:half], weights=big.label[:half], minlength=len(values))
    seen = np.bincount(inverse[:half], minlength=len(values))
    rate = (clicks + big.label[:half].mean()) / (seen + 1)
    assert _auc(big.label[half:], rate[inverse[half:]]) > 0.55


def test_the_repository_sample_is_what_the_generator_writes(tmp_path: Path) -> None:
    written = write(tmp_path / "criteo_sample.txt", SAMPLE_ROWS, SAMPLE_SEED, "criteo_sample")
    assert SAMPLE_PATH.read_bytes() == written.read_bytes(), f"regenerate it: {REGENERATE}"
    assert SAMPLE_PATH.is_relative_to(REPO)
    assert len(SAMPLE_PATH.read_text().splitlines()) == SAMPLE_ROWS + 1


def test_the_dataset_configs_read_the_sample_and_the_original_layout() -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        sample = compose(config_name="preprocess", overrides=["dataset=criteo_sample"]).dataset
        original = compose(config_name="preprocess", overrides=["dataset=criteo"]).dataset
    # paths.root_dir is the working directory, the repository root
    assert (REPO / sample.path).resolve() == SAMPLE_PATH
    assert (sample.sep, sample.header) == (",", True)
    assert (original.sep, original.header) == ("\t", False)
    assert list(sample.columns) == list(original.columns) == list(COLUMNS)
    assert REGENERATE in (REPO / "conf" / "dataset" / "criteo_sample.yaml").read_text()


def test_the_command_line_writes_the_file(tmp_path: Path, capsys) -> None:
    out = tmp_path / "deep" / "criteo.txt"
    assert criteo_format.main(["--rows", "25", "--seed", "4", "--out", str(out)]) == 0
    assert out.read_text() == write(tmp_path / "direct.txt", 25, 4, "criteo").read_text()
    printed = capsys.readouterr().out
    assert "25 rows" in printed
    rows = criteo_format.generate(25, 4)
    assert f"true-probability AUC {roc_auc(rows.label, rows.probability):.4f}" in printed
    assert [p.name for p in out.parent.iterdir()] == ["criteo.txt"]  # no temporary file left
    with pytest.raises(SystemExit):
        criteo_format.main(["--rows", "-1", "--out", str(out)])
