"""recsys.baselines against brute-force references on small random data."""

import numpy as np

from recsys.baselines import item_knn_top, item_neighbours, popularity_top
from recsys.evaluate import _without


def _cosine(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    matrix = np.zeros((users.max() + 1, n_items))
    matrix[users, items] = 1.0
    norms = np.sqrt(np.maximum(matrix.sum(axis=0), 1))
    sim = matrix.T @ matrix / np.outer(norms, norms)
    np.fill_diagonal(sim, 0.0)
    return sim


def test_item_neighbours_are_the_top_cosine_items() -> None:
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 40, 300), rng.integers(2, 30, 300)
    ids, sims = item_neighbours(users, items, 30, neighbours=5, batch=7)
    reference = _cosine(users, items, 30)
    for item in range(30):
        expected = np.sort(reference[item])[::-1][:5]
        np.testing.assert_allclose(sims[item], expected, rtol=1e-5)
        found = ids[item][ids[item] >= 0]
        np.testing.assert_allclose(reference[item, found], sims[item][: len(found)], rtol=1e-5)
    assert (ids[:2] == -1).all()  # ids 0 and 1 (missing, unknown) have no interactions


def test_item_knn_scores_sum_similarities_and_skip_excluded_items() -> None:
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 30, 250), rng.integers(2, 25, 250)
    ids, sims = item_neighbours(users, items, 25, neighbours=24)
    reference = _cosine(users, items, 25)
    history = [{2, 5, 9}, {7}]
    exclude = [{2, 5, 9}, set()]
    got = item_knn_top(history, ids, sims, 4, exclude)
    for row, seen in enumerate(history):
        scores = reference[sorted(seen)].sum(axis=0)
        scores[:2] = 0.0
        scores[sorted(exclude[row])] = 0.0
        np.testing.assert_allclose(np.sort(scores)[::-1][:4], scores[got[row]], rtol=1e-5)
        assert not set(got[row].tolist()) & exclude[row]


def test_popularity_counts_interactions_and_skips_each_users_excluded() -> None:
    items = np.array([5, 5, 5, 3, 3, 9, 1, 1, 1, 1])  # id 1 (unknown) never recommended
    got = popularity_top(items, 2, 2, exclude=[{5}, set()])
    assert got.tolist() == [[3, 9], [5, 3]]


def test_search_results_without_a_users_seen_items_keep_their_order() -> None:
    item_ids = np.array([10, 11, 12, 13, 14])
    rows = np.array([[4, 0, 2, 1, -1], [3, 2, 1, 0, 4]])
    inner = np.arange(10, dtype=np.float32).reshape(2, 5)
    got_inner, got_rows = _without(inner, rows, item_ids, [{10, 12}, set()], 3)
    assert got_rows.tolist() == [[4, 1, -1], [3, 2, 1]]
    assert got_inner[0, :2].tolist() == [0.0, 3.0] and got_inner[0, 2] == -np.inf
