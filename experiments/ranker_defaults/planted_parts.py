"""How much test AUC each part of the generator's planted score carries.

    python experiments/ranker_defaults/planted_parts.py 100000

Rebuilds the rows of `python -m recsys.generate rows=<rows> seed=0` (the same world, blocks
and random draws as `generate_block`) and prints the AUC, against the drawn labels of the
test rows, of the main effects alone, with the language match, with the taste affinity, and
of the full score.
"""

from __future__ import annotations

import sys

import numpy as np

from recsys.data import generator as g


def main(rows: int) -> None:
    s = g.GeneratorSettings(rows=rows)
    w = g.build_world(s)
    users, tweets, follows, labels, tests = [], [], [], [], []
    for block in range((rows + g.BLOCK_ROWS - 1) // g.BLOCK_ROWS):
        n = min(g.BLOCK_ROWS, rows - block * g.BLOCK_ROWS)
        rng = np.random.default_rng([s.seed, 1, block])
        user = w.user_by_activity[g.draw(rng, w.activity_cdf, n)]
        tweet = g.expose(w, s, rng, user)
        follow = g.follows_back(w, user, w.tweet_author[tweet])
        logits = g.engagement_logits(w, user, tweet, follow, s.signal)
        engaged = np.zeros(n, dtype=bool)
        for kind in g.ENGAGEMENTS:  # the draws generate_block makes, in its order
            engaged |= rng.random(n) < g.sigmoid(logits[kind])
            rng.exponential(g.MEAN_ENGAGEMENT_DELAY_S, n)
        tests.append(rng.random(n) < s.test_fraction)
        users.append(user)
        tweets.append(tweet)
        follows.append(follow)
        labels.append(engaged)
    test = np.concatenate(tests)
    user, tweet = np.concatenate(users)[test], np.concatenate(tweets)[test]
    follow, label = np.concatenate(follows)[test], np.concatenate(labels)[test].astype(float)
    author = w.tweet_author[tweet]
    affinity = g.AFFINITY_WEIGHT * np.einsum("ij,ij->i", w.user_taste[user], w.tweet_topic[tweet])
    same = w.user_language[user] == w.tweet_language_idx[tweet]
    language = g.LANGUAGE_MATCH_WEIGHT * np.where(same, 1.0, -0.5)
    main_effects = (
        w.tweet_media_effect[tweet]
        + w.tweet_type_effect[tweet]
        + g.FOLLOWS_WEIGHT * follow
        + g.VERIFIED_WEIGHT * w.user_verified[author]
        + g.FOLLOWERS_WEIGHT * (np.log10(1.0 + w.user_follower[author]) - 3.0)
    )
    print(f"test rows {int(test.sum()):,}")
    for name, score in (
        ("main effects", main_effects),
        ("main effects + language match", main_effects + language),
        ("main effects + taste affinity", main_effects + affinity),
        ("full score", main_effects + language + affinity),
    ):
        print(f"{name}: AUC {g.roc_auc(label, score):.4f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
