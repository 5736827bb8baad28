"""recsys.export.prior: the popularity prior carried by the index's extra component."""

import numpy as np

from recsys.export.prior import COMPONENT_MAX, Prior, choose_beta, scale_for


def test_inner_product_of_augmented_vectors_adds_beta_log_popularity() -> None:
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(4, 8)), rng.normal(size=(6, 8))
    interactions = np.array([0, 1, 5, 50, 500, 3])
    prior = Prior(beta=0.3, scale=scale_for(interactions))
    got = prior.queries(users) @ prior.items(items, interactions).T
    want = users @ items.T + 0.3 * np.log1p(interactions)[None, :]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the items' component stays small next to unit-length vectors
    assert prior.items(items, interactions)[:, -1].max() == np.float32(COMPONENT_MAX)


def test_beta_zero_or_no_entry_means_no_component() -> None:
    assert Prior.of_manifest({}) is None
    assert Prior.of_manifest({"retrieval_prior": {"beta": 0.0, "scale": 0.1}}) is None
    assert Prior.of_manifest({"retrieval_prior": {"beta": 0.2, "scale": 0.1}}) == Prior(0.2, 0.1)


def test_choose_beta_prefers_the_models_order_on_ties() -> None:
    best, values = choose_beta(lambda b: min(b, 0.1), betas=(0.0, 0.1, 0.5))
    assert best == 0.1 and values[0.5] == 0.1
    assert choose_beta(lambda b: 0.2, betas=(0.0, 0.1))[0] == 0.0
