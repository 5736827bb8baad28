"""recsys.export.blend: the final score rule that export fits, evaluate and serving apply."""

import numpy as np
import pytest

from recsys.errors import RecsysError
from recsys.evaluate import Candidates, mean_metrics, ranked_by
from recsys.export.blend import Blend, BlendSettings, choose_weight


def test_scores_standardise_with_the_fixed_scales_then_mix() -> None:
    rule = Blend(
        weight=0.25, retrieval_mean=1.0, retrieval_std=2.0, ranker_mean=-1.0, ranker_std=4.0
    )
    got = rule.scores(np.float32([3.0, 1.0]), np.float32([3.0, -5.0]))
    # 0.25 * (3 - 1) / 2 + 0.75 * (3 + 1) / 4 = 1.0 ; 0.25 * 0 + 0.75 * (-4 / 4) = -0.75
    np.testing.assert_allclose(got, [1.0, -0.75])


def test_weights_one_and_zero_give_each_stages_order_and_padding_stays_last() -> None:
    rng = np.random.default_rng(0)
    retrieval, ranker = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    retrieval[0, 5] = -np.inf  # a user with fewer candidates
    fitted = Blend.fitted(0.0, retrieval, ranker)
    assert fitted.retrieval_mean == pytest.approx(retrieval[np.isfinite(retrieval)].mean())
    for weight, source in ((1.0, retrieval), (0.0, ranker)):
        order = np.argsort(-Blend(weight=weight).scores(retrieval, ranker), axis=1)
        expected = np.argsort(-np.where(np.isfinite(retrieval), source, -np.inf), axis=1)
        np.testing.assert_array_equal(order, expected)
    assert Blend(weight=0.5).scores(retrieval, ranker)[0, 5] == -np.inf


def test_an_items_score_does_not_depend_on_the_other_candidates() -> None:
    rule = Blend(weight=0.6, retrieval_mean=0.5, retrieval_std=0.1, ranker_mean=0.0, ranker_std=1.0)
    retrieval, ranker = np.float32([0.9, 0.7, 0.6]), np.float32([-1.0, 2.0, 0.5])
    all_three = rule.scores(retrieval, ranker)
    np.testing.assert_array_equal(rule.scores(retrieval[1:], ranker[1:]), all_three[1:])


def test_choose_weight_takes_the_best_and_breaks_ties_toward_retrieval() -> None:
    best, values = choose_weight(lambda w: 1.0 - abs(w - 0.3), weights=(0.0, 0.3, 0.6))
    assert best == 0.3 and values == {0.0: 0.7, 0.3: 1.0, 0.6: 0.7}
    assert choose_weight(lambda w: 0.5, weights=(0.0, 0.5, 1.0))[0] == 1.0


def test_manifest_without_a_blend_keeps_the_rankers_order() -> None:
    assert Blend.of_manifest({}) == Blend(weight=0.0)
    entry = {"weight": 0.7, "retrieval_std": 2.0, "chosen_on": "valid", "values": {}}
    assert Blend.of_manifest({"blend": entry}) == Blend(weight=0.7, retrieval_std=2.0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (BlendSettings(weight=1.5), "blend.weight"),
        (BlendSettings(k=50, candidates=10), "blend.candidates"),
        (BlendSettings(max_users=0), "blend.max_users"),
    ],
)
def test_bad_blend_settings_are_refused(settings: BlendSettings, message: str) -> None:
    with pytest.raises(RecsysError, match=message):
        settings.validate()


def test_ranked_by_uses_the_rule_and_recall_counts_held_out_hits() -> None:
    c = Candidates(
        data=None,  # type: ignore[arg-type]
        users=[2, 3],
        targets=[{11}, {20, 22}],
        items=np.array([[10, 11, 12], [20, 21, 22]]),
        retrieval=np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]),
        ranker=np.array([[0.0, 5.0, 1.0], [0.0, 1.0, 5.0]]),
        skipped=0,
    )
    assert ranked_by(c, Blend(weight=1.0), 1).tolist() == [[10], [20]]
    assert ranked_by(c, Blend(weight=0.0), 1).tolist() == [[11], [22]]
    assert mean_metrics(ranked_by(c, Blend(weight=0.0), 1), c.targets, [1])["recall@1"] == 0.75
    assert mean_metrics(ranked_by(c, Blend(weight=1.0), 1), c.targets, [1])["recall@1"] == 0.25
