"""Seeded, vectorised generator of RecSys 2021-shaped interaction logs.

Layout of one output directory:

    train/part-00000.parquet ...     raw rows, exactly `RAW_SCHEMA`
    test/part-00000.parquet ...
    _truth/{train,test}/part-*.parquet   true engagement probabilities, row-aligned with the data
    _generator.json                  settings, row counts, label rates, best achievable AUC

How it stays deterministic: users and tweets (the "world") come from one seeded stream;
interaction rows are drawn in fixed blocks of `BLOCK_ROWS`, block `b` from its own stream
`(seed, b)`. Partitions only decide where rows are cut into files, and worker processes only
decide who writes which file, so the rows never depend on either, and the bytes depend only
on (settings, seed, partitions). docs/generator.md describes the exposure model (which tweet a
user is shown) and the planted engagement model.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys import interrupts
from recsys.data.recsys2021 import ENGAGEMENTS, LIST_SEPARATOR, RAW_SCHEMA
from recsys.errors import RecsysError
from recsys.provenance import swap_in, write_json_atomic

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # 2: personalised exposure (follow graph)
BLOCK_ROWS = 65_536
ROWS_PER_PARTITION = 250_000
LATENT_DIM = 16

# The observation window of the real challenge data (2021-02-04 .. 2021-02-25, UTC).
WINDOW_START = 1_612_396_800
WINDOW_END = 1_614_211_200
ACCOUNTS_START = 1_167_609_600  # 2007-01-01

# present_media combinations: (value or None, probability, engagement effect)
MEDIA_COMBOS: tuple[tuple[str | None, float, float], ...] = (
    (None, 0.55, 0.0),
    ("Photo", 0.25, 0.3),
    ("Video", 0.10, 0.5),
    ("GIF", 0.04, 0.2),
    ("Photo\tPhoto", 0.04, 0.4),
    ("Photo\tVideo", 0.02, 0.6),
)
TWEET_TYPE_PROBS = {"Retweet": 0.3, "Quote": 0.1, "TopLevel": 0.6}
TWEET_TYPE_EFFECT = {"Retweet": -0.3, "Quote": 0.0, "TopLevel": 0.2}

# Planted engagement model: logit_e = BASE_LOGIT[e] + signal * score(user, tweet, context).
BASE_LOGIT = {"reply": -4.7, "retweet": -3.2, "retweet_with_comment": -6.1, "like": -1.25}
AFFINITY_WEIGHT = 3.0  # x cosine(user taste, tweet topic)
LANGUAGE_MATCH_WEIGHT = 0.8  # tweet in the user's preferred language (else -half of it)
FOLLOWS_WEIGHT = 1.0  # engagee_follows_engager
VERIFIED_WEIGHT = 0.3  # author is verified
FOLLOWERS_WEIGHT = 0.15  # x (log10(1 + author followers) - 3)
# Exposure: a personal row shows a tweet of an author the user follows. Each user follows the
# `follows_per_user` authors nearest its taste among FOLLOW_CANDIDATES x that many candidates
# drawn uniformly from the authors of >= 1 tweet (not by tweet count: a follow of a prolific
# author spreads exposure thinly over thousands of tweets). Timelines favour close ties: the
# k-th nearest follow is picked with weight 1 / k ** FOLLOW_RANK_EXPONENT, then one of its
# tweets by popularity.
FOLLOW_CANDIDATES = 8
FOLLOW_RANK_EXPONENT = 1.0
# engagee_follows_engager: the author follows the user back with this probability when the
# user follows the author, else with the other; a property of the (user, author) pair, so
# every row of a pair agrees. With personal_exposure 0.6 about 30% of rows carry the flag.
FOLLOW_BACK_IF_FOLLOWED = 0.45
FOLLOW_BACK_OTHERWISE = 0.06
MAX_FOLLOWS_PER_USER = 1024
MEAN_ENGAGEMENT_DELAY_S = 6 * 3600


class GeneratorError(RecsysError, ValueError):
    """Bad generator input; the message names the setting or path at fault."""


@dataclass(frozen=True)
class GeneratorSettings:
    """Everything that decides the generated rows (see conf/dataset/recsys2021_dummy.yaml)."""

    rows: int
    seed: int = 0
    test_fraction: float = 0.1
    signal: float = 1.0
    personal_exposure: float = 0.6
    follows_per_user: int = 32
    num_users: int = 20_000
    num_tweets: int = 50_000
    num_hashtags: int = 5_000
    num_domains: int = 1_000
    num_languages: int = 66
    num_text_tokens: int = 30_000
    zipf_user_activity: float = 1.0
    zipf_authors: float = 1.1
    zipf_tweets: float = 0.9
    zipf_hashtags: float = 1.1
    zipf_domains: float = 1.2
    zipf_languages: float = 1.5

    def validate(self) -> None:
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows <= 0:
            raise GeneratorError(f"rows must be a positive integer, got {self.rows!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise GeneratorError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise GeneratorError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if not (self.signal >= 0.0 and math.isfinite(self.signal)):
            raise GeneratorError(f"signal must be a finite number >= 0, got {self.signal}")
        if not 0.0 <= self.personal_exposure <= 1.0:
            raise GeneratorError(
                f"personal_exposure must be in [0, 1], got {self.personal_exposure}"
            )
        if (
            isinstance(self.follows_per_user, bool)
            or not isinstance(self.follows_per_user, int)
            or not 1 <= self.follows_per_user <= MAX_FOLLOWS_PER_USER
        ):
            raise GeneratorError(
                f"follows_per_user must be an integer in [1, {MAX_FOLLOWS_PER_USER}], "
                f"got {self.follows_per_user!r}"
            )
        for name in (
            "num_users",
            "num_tweets",
            "num_hashtags",
            "num_domains",
            "num_languages",
            "num_text_tokens",
        ):
            if getattr(self, name) < 1:
                raise GeneratorError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_users < 2:
            raise GeneratorError(f"num_users must be >= 2, got {self.num_users}")
        for name in (
            "zipf_user_activity",
            "zipf_authors",
            "zipf_tweets",
            "zipf_hashtags",
            "zipf_domains",
            "zipf_languages",
        ):
            if getattr(self, name) < 0:
                raise GeneratorError(f"{name} must be >= 0, got {getattr(self, name)}")


def settings_from_dataset(dataset: Mapping[str, Any], **top_level: Any) -> GeneratorSettings:
    """Settings from a `dataset=recsys2021_dummy` config node; `top_level` values win."""
    knobs = {
        name: dataset[name]
        for name in GeneratorSettings.__dataclass_fields__
        if name in dataset and name not in top_level
    }
    return GeneratorSettings(**knobs, **top_level)


@dataclass
class GenerateSummary:
    """What one generator run wrote (also saved as `_generator.json`)."""

    out: str
    settings: dict[str, Any]
    partitions: int
    rows: dict[str, int]
    files: dict[str, list[str]]
    label_rate: dict[str, dict[str, float]]
    best_auc: dict[str, float | None]
    seconds: float = 0.0
    generator_version: int = GENERATOR_VERSION
    columns: list[str] = field(default_factory=lambda: RAW_SCHEMA.names)


# ----------------------------------------------------------------------- helpers

_HEX_PAIRS = np.array([f"{i:02X}".encode() for i in range(256)], dtype="S2")


def hex_ids(rng: np.random.Generator, n: int, nbytes: int = 16) -> pa.StringArray:
    """`n` random upper-case hex strings of `2 * nbytes` characters (like the real ids)."""
    raw = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    data = np.ascontiguousarray(_HEX_PAIRS[raw]).tobytes()
    width = 2 * nbytes
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def zipf_cdf(n: int, exponent: float) -> np.ndarray:
    """Cumulative distribution of rank-based Zipf weights `1 / (rank + 1) ** exponent`."""
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def draw(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    """Indices drawn from the distribution whose cumulative weights are `cdf`."""
    idx = np.searchsorted(cdf, rng.random(size), side="right")
    return np.minimum(idx, len(cdf) - 1)


def joined_lists(counts: np.ndarray, values: pa.Array) -> pa.StringArray:
    """Tab-join consecutive runs of `values` (run lengths `counts`); a zero count is null."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    lists = pa.ListArray.from_arrays(
        pa.array(offsets), values.cast(pa.string()), mask=pa.array(counts == 0)
    )
    return pc.binary_join(lists, LIST_SEPARATOR)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties averaged); None if one class is absent."""
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    _, first, counts = np.unique(np.asarray(scores)[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# ------------------------------------------------------------------------- world


@dataclass
class World:
    """Users and tweets: the entities that interaction rows are drawn from."""

    user_id: pa.StringArray
    user_follower: np.ndarray
    user_following: np.ndarray
    user_verified: np.ndarray
    user_creation: np.ndarray
    user_taste: np.ndarray  # num_users x LATENT_DIM, unit length
    user_language: np.ndarray  # preferred language index
    user_by_activity: np.ndarray  # user index of each activity rank
    activity_cdf: np.ndarray
    tweet_id: pa.StringArray
    tweet_author: np.ndarray
    tweet_text: pa.StringArray
    tweet_hashtags: pa.StringArray
    tweet_media: pa.StringArray
    tweet_media_effect: np.ndarray
    tweet_links: pa.StringArray
    tweet_domains: pa.StringArray
    tweet_type: pa.StringArray
    tweet_type_effect: np.ndarray
    tweet_language: pa.StringArray
    tweet_language_idx: np.ndarray
    tweet_timestamp: np.ndarray
    tweet_topic: np.ndarray  # num_tweets x LATENT_DIM, unit length
    tweet_cdf: np.ndarray
    user_follows: np.ndarray  # num_users x follows_per_user author indices, nearest first
    follow_rank_cdf: np.ndarray  # which follow a personal row shows (nearest most often)
    author_tweets: np.ndarray  # tweet indices grouped by author, each group most popular first
    author_start: np.ndarray  # num_users + 1 offsets of each author's group in author_tweets
    author_tweet_weight: np.ndarray  # num_tweets + 1 running popularity over author_tweets
    pair_key: int  # seeds the (user, author) follow-back hash


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def build_world(s: GeneratorSettings) -> World:
    """Draw every user and tweet from the seed (independent of row count and partitions)."""
    # spawn(5)[:4] equals spawn(4): the follow stream added in version 2 changes no earlier draw
    streams = [np.random.default_rng(c) for c in np.random.SeedSequence([s.seed, 0]).spawn(5)]
    ids_rng, user_rng, tweet_rng, list_rng, follow_rng = streams
    n_u, n_t = s.num_users, s.num_tweets

    user_id = hex_ids(ids_rng, n_u)
    tweet_id = hex_ids(ids_rng, n_t)
    languages = hex_ids(ids_rng, s.num_languages)
    hashtag_pool = hex_ids(ids_rng, s.num_hashtags)
    domain_pool = hex_ids(ids_rng, s.num_domains)

    # Users. Authors high in the Zipf ranking get more followers, as popular accounts do.
    author_cdf = zipf_cdf(n_u, s.zipf_authors)
    author_share = np.diff(author_cdf, prepend=0.0)
    follower = np.floor(np.exp(user_rng.normal(4.5, 1.8, n_u)) + 5e5 * author_share)
    following = np.floor(np.exp(user_rng.normal(5.0, 1.2, n_u)))
    verified = user_rng.random(n_u) < sigmoid(np.log1p(follower) - 11.0) + 0.01
    creation = user_rng.integers(ACCOUNTS_START, WINDOW_START, n_u)
    taste = _unit_rows(user_rng.normal(size=(n_u, LATENT_DIM)))
    language_cdf = zipf_cdf(s.num_languages, s.zipf_languages)
    user_language = draw(user_rng, language_cdf, n_u)
    # Engaging users are drawn by activity rank; the ranks are a permutation of the author
    # ranks, so the heaviest engagers are not the most-followed authors.
    user_by_activity = user_rng.permutation(n_u)

    # Tweets: an author, a topic near the author's taste, a type, a language, media, lists.
    author = draw(tweet_rng, author_cdf, n_t)
    topic = _unit_rows(taste[author] + 0.5 * tweet_rng.normal(size=(n_t, LATENT_DIM)))
    type_names = list(TWEET_TYPE_PROBS)
    type_idx = draw(tweet_rng, np.cumsum(list(TWEET_TYPE_PROBS.values())), n_t)
    language_idx = draw(tweet_rng, language_cdf, n_t)
    media_cdf = np.cumsum([p for _, p, _ in MEDIA_COMBOS])
    media_idx = draw(tweet_rng, media_cdf / media_cdf[-1], n_t)
    timestamp = tweet_rng.integers(WINDOW_START, WINDOW_END, n_t)

    n_tokens = 6 + list_rng.poisson(20, n_t)
    token_cdf = zipf_cdf(s.num_text_tokens, 1.0)
    body = 1000 + draw(list_rng, token_cdf, int(n_tokens.sum()))
    # every text starts with [CLS] = 101 and ends with [SEP] = 102, as BERT ids do
    starts = np.cumsum(n_tokens) - n_tokens
    tokens = np.empty(int(n_tokens.sum()) + 2 * n_t, dtype=np.int64)
    pos = starts + 2 * np.arange(n_t)
    is_body = np.ones(len(tokens), dtype=bool)
    is_body[pos] = False
    is_body[pos + n_tokens + 1] = False
    tokens[pos] = 101
    tokens[pos + n_tokens + 1] = 102
    tokens[is_body] = body
    text = joined_lists(n_tokens + 2, pa.array(tokens))

    n_hashtags = np.where(list_rng.random(n_t) < 0.2, 1 + list_rng.poisson(0.8, n_t), 0)
    hashtag_values = hashtag_pool.take(
        draw(list_rng, zipf_cdf(s.num_hashtags, s.zipf_hashtags), int(n_hashtags.sum()))
    )
    n_links = np.where(list_rng.random(n_t) < 0.15, 1 + (list_rng.random(n_t) < 0.1), 0)
    link_values = hex_ids(list_rng, int(n_links.sum()))
    domain_values = domain_pool.take(
        draw(list_rng, zipf_cdf(s.num_domains, s.zipf_domains), int(n_links.sum()))
    )

    tweet_cdf = zipf_cdf(n_t, s.zipf_tweets)
    # stable sort: within an author, tweets stay in index order = global popularity order
    author_tweets = np.argsort(author, kind="stable")
    author_start = np.searchsorted(author[author_tweets], np.arange(n_u + 1))
    author_tweet_weight = np.concatenate(
        [[0.0], np.cumsum(np.diff(tweet_cdf, prepend=0.0)[author_tweets])]
    )

    return World(
        user_id=user_id,
        user_follower=follower.astype(np.int64),
        user_following=following.astype(np.int64),
        user_verified=verified,
        user_creation=creation.astype(np.int64),
        user_taste=taste,
        user_language=user_language,
        user_by_activity=user_by_activity,
        activity_cdf=zipf_cdf(n_u, s.zipf_user_activity),
        tweet_id=tweet_id,
        tweet_author=author,
        tweet_text=text,
        tweet_hashtags=joined_lists(n_hashtags, hashtag_values),
        tweet_media=pa.array([m for m, _, _ in MEDIA_COMBOS], pa.string()).take(media_idx),
        tweet_media_effect=np.array([e for _, _, e in MEDIA_COMBOS])[media_idx],
        tweet_links=joined_lists(n_links, link_values),
        tweet_domains=joined_lists(n_links, domain_values),
        tweet_type=pa.array(type_names, pa.string()).take(type_idx),
        tweet_type_effect=np.array([TWEET_TYPE_EFFECT[t] for t in type_names])[type_idx],
        tweet_language=languages.take(language_idx),
        tweet_language_idx=language_idx,
        tweet_timestamp=timestamp.astype(np.int64),
        tweet_topic=topic,
        tweet_cdf=tweet_cdf,
        user_follows=follow_graph(follow_rng, taste, author, s.follows_per_user),
        follow_rank_cdf=zipf_cdf(s.follows_per_user, FOLLOW_RANK_EXPONENT),
        author_tweets=author_tweets,
        author_start=author_start,
        author_tweet_weight=author_tweet_weight,
        pair_key=int(np.random.SeedSequence([s.seed, 2]).generate_state(1, np.uint64)[0]),
    )


def follow_graph(
    rng: np.random.Generator, taste: np.ndarray, tweet_author: np.ndarray, follows: int
) -> np.ndarray:
    """Authors each user follows (num_users x `follows`): the nearest to the user's taste
    (cosine with the author's own taste), nearest first, among FOLLOW_CANDIDATES * `follows`
    candidates drawn uniformly from the authors of at least one tweet. Duplicate candidates
    count once; a user with fewer distinct candidates than `follows` repeats some (only in
    tiny catalogues)."""
    n_u = len(taste)
    authors = np.flatnonzero(np.bincount(tweet_author, minlength=n_u))
    n_cand = FOLLOW_CANDIDATES * follows
    out = np.empty((n_u, follows), dtype=np.int64)
    chunk = max(1, 2**20 // n_cand)  # users per step: bounds the users x candidates blocks
    for lo in range(0, n_u, chunk):
        hi = min(lo + chunk, n_u)
        picks = rng.integers(0, len(authors), (hi - lo, n_cand), dtype=np.int32)
        cand = np.sort(authors[picks], axis=1)
        score = np.matmul(np.take(taste, cand, axis=0), taste[lo:hi, :, None])[..., 0]
        score[:, 1:][cand[:, 1:] == cand[:, :-1]] = -np.inf
        top = np.argpartition(-score, follows - 1, axis=1)[:, :follows]
        top_author = np.take_along_axis(cand, top, axis=1)
        top_score = np.take_along_axis(score, top, axis=1)
        # nearest first (ties by author id), whatever order argpartition left them in
        order = np.lexsort((top_author, -top_score), axis=1)
        out[lo:hi] = np.take_along_axis(top_author, order, axis=1)
    return out


def pair_uniform(key: int, user: np.ndarray, author: np.ndarray, num_users: int) -> np.ndarray:
    """A uniform [0, 1) number per (user, author) pair (SplitMix64 of the pair and `key`):
    the same pair gets the same number in every row, block and run."""
    with np.errstate(over="ignore"):
        x = (user.astype(np.uint64) * np.uint64(num_users) + author.astype(np.uint64)) ^ np.uint64(
            key
        )
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def expose(
    w: World, s: GeneratorSettings, rng: np.random.Generator, user: np.ndarray
) -> np.ndarray:
    """The tweet each row's user is shown: with probability `personal_exposure` a tweet of a
    followed author (nearer follows more often, tweet by popularity within the author's),
    otherwise a tweet by global popularity. Every draw is made for every row, so
    the knob only changes which rows are personal, not the random stream."""
    n = len(user)
    popular = draw(rng, w.tweet_cdf, n)
    personal = rng.random(n) < s.personal_exposure
    followed = w.user_follows[user, draw(rng, w.follow_rank_cdf, n)]
    lo, hi = w.author_start[followed], w.author_start[followed + 1]
    weight = w.author_tweet_weight
    target = weight[lo] + rng.random(n) * (weight[hi] - weight[lo])
    pos = np.clip(np.searchsorted(weight, target, side="right") - 1, lo, hi - 1)
    return np.where(personal, w.author_tweets[pos], popular)


def follows_back(w: World, user: np.ndarray, author: np.ndarray) -> np.ndarray:
    """engagee_follows_engager: likely when the user follows the author (mutual follows)."""
    user_follows_author = (w.user_follows[user] == author[:, None]).any(axis=1)
    p = np.where(user_follows_author, FOLLOW_BACK_IF_FOLLOWED, FOLLOW_BACK_OTHERWISE)
    return pair_uniform(w.pair_key, user, author, len(w.user_id)) < p


# -------------------------------------------------------------------------- rows


def engagement_logits(
    w: World, user: np.ndarray, tweet: np.ndarray, follows: np.ndarray, signal: float
) -> dict[str, np.ndarray]:
    """The planted model (docs/generator.md): one logit per engagement kind for each row."""
    author = w.tweet_author[tweet]
    affinity = np.einsum("ij,ij->i", w.user_taste[user], w.tweet_topic[tweet])
    same_language = w.user_language[user] == w.tweet_language_idx[tweet]
    score = (
        AFFINITY_WEIGHT * affinity
        + LANGUAGE_MATCH_WEIGHT * np.where(same_language, 1.0, -0.5)
        + w.tweet_media_effect[tweet]
        + w.tweet_type_effect[tweet]
        + FOLLOWS_WEIGHT * follows
        + VERIFIED_WEIGHT * w.user_verified[author]
        + FOLLOWERS_WEIGHT * (np.log10(1.0 + w.user_follower[author]) - 3.0)
    )
    return {kind: BASE_LOGIT[kind] + signal * score for kind in ENGAGEMENTS}


def generate_block(
    w: World, s: GeneratorSettings, block: int
) -> tuple[pa.Table, pa.Table, np.ndarray]:
    """Rows `[block * BLOCK_ROWS, ...)`: (raw rows, true probabilities, is-test mask)."""
    start = block * BLOCK_ROWS
    n = min(BLOCK_ROWS, s.rows - start)
    rng = np.random.default_rng([s.seed, 1, block])
    user = w.user_by_activity[draw(rng, w.activity_cdf, n)]
    tweet = expose(w, s, rng, user)
    author = w.tweet_author[tweet]
    follows = follows_back(w, user, author)
    logits = engagement_logits(w, user, tweet, follows, s.signal)
    tweet_ts = w.tweet_timestamp[tweet]

    columns: dict[str, Any] = {
        "text_tokens": w.tweet_text.take(tweet),
        "hashtags": w.tweet_hashtags.take(tweet),
        "tweet_id": w.tweet_id.take(tweet),
        "present_media": w.tweet_media.take(tweet),
        "present_links": w.tweet_links.take(tweet),
        "present_domains": w.tweet_domains.take(tweet),
        "tweet_type": w.tweet_type.take(tweet),
        "language": w.tweet_language.take(tweet),
        "tweet_timestamp": tweet_ts,
    }
    for prefix, who in (("engaged_with_user", author), ("enaging_user", user)):
        columns[f"{prefix}_id"] = w.user_id.take(who)
        columns[f"{prefix}_follower_count"] = w.user_follower[who]
        columns[f"{prefix}_following_count"] = w.user_following[who]
        columns[f"{prefix}_is_verified"] = w.user_verified[who]
        columns[f"{prefix}_account_creation"] = w.user_creation[who]
    columns["engagee_follows_engager"] = follows

    probs = {}
    for kind in ENGAGEMENTS:
        p = sigmoid(logits[kind])
        engaged = rng.random(n) < p
        delay = np.ceil(rng.exponential(MEAN_ENGAGEMENT_DELAY_S, n)).astype(np.int64)
        columns[f"{kind}_timestamp"] = pa.array(tweet_ts + delay, pa.int64(), mask=~engaged)
        probs[f"p_{kind}"] = p
    probs["p_any"] = 1.0 - np.prod([1.0 - probs[f"p_{k}"] for k in ENGAGEMENTS], axis=0)
    is_test = rng.random(n) < s.test_fraction

    rows = pa.Table.from_arrays(
        [pa.array(columns[f.name], f.type) for f in RAW_SCHEMA], schema=RAW_SCHEMA
    )
    truth = pa.table({k: pa.array(v, pa.float64()) for k, v in probs.items()})
    return rows, truth, is_test


def partition_bounds(rows: int, partitions: int) -> list[tuple[int, int]]:
    """Contiguous global row ranges, one per partition, as even as possible."""
    edges = [rows * i // partitions for i in range(partitions + 1)]
    return list(itertools.pairwise(edges))


_WORLD: World | None = None  # set in the parent before forking workers


def write_partition(s: GeneratorSettings, index: int, start: int, end: int, out: str) -> dict:
    """Generate global rows [start, end) and write them as part-<index> of train/ and test/."""
    w = _WORLD if _WORLD is not None else build_world(s)
    data, truth, test = [], [], []
    for block in range(start // BLOCK_ROWS, (end - 1) // BLOCK_ROWS + 1):
        b_rows, b_truth, b_test = generate_block(w, s, block)
        lo = max(start - block * BLOCK_ROWS, 0)
        hi = min(end - block * BLOCK_ROWS, len(b_test))
        data.append(b_rows.slice(lo, hi - lo))
        truth.append(b_truth.slice(lo, hi - lo))
        test.append(b_test[lo:hi])
    rows, probs, is_test = pa.concat_tables(data), pa.concat_tables(truth), np.concatenate(test)

    counts, labels = {}, {}
    name = f"part-{index:05d}.parquet"
    for split, mask in (("train", ~is_test), ("test", is_test)):
        keep = pa.array(mask)
        split_rows, split_probs = rows.filter(keep), probs.filter(keep)
        pq.write_table(split_rows, Path(out, split, name))
        pq.write_table(split_probs, Path(out, "_truth", split, name))
        counts[split] = split_rows.num_rows
        labels[split] = {
            kind: int(split_rows[f"{kind}_timestamp"].null_count) for kind in ENGAGEMENTS
        }
        any_engaged = np.zeros(split_rows.num_rows, dtype=bool)
        for kind in ENGAGEMENTS:
            any_engaged |= split_rows[f"{kind}_timestamp"].is_valid().to_numpy(zero_copy_only=False)
        labels[split]["any"] = int(split_rows.num_rows - any_engaged.sum())
    return {"index": index, "name": name, "rows": counts, "negatives": labels}


# ---------------------------------------------------------------------- the run


def _prepare_output(out: Path, overwrite: bool) -> Path:
    """Check the destination and make a fresh temp directory beside it."""
    if out.exists() and not overwrite:
        raise GeneratorError(f"output {out} already exists; pass overwrite=true to replace it")
    if out.exists() and not out.is_dir():
        raise GeneratorError(f"output {out} exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        for sub in ("train", "test", "_truth/train", "_truth/test"):
            (tmp / sub).mkdir(parents=True)
    except OSError as e:
        raise GeneratorError(f"cannot write output {out}: {e.strerror or e}") from e
    return tmp


def best_auc(out: Path, split: str) -> float | None:
    """AUC of the true any-engagement probability: the ceiling for any model on this split."""
    truth = pq.read_table(out / "_truth" / split, columns=["p_any"])["p_any"].to_numpy()
    table = pq.read_table(out / split, columns=[f"{k}_timestamp" for k in ENGAGEMENTS])
    engaged = np.zeros(table.num_rows, dtype=bool)
    for column in table.columns:
        engaged |= column.is_valid().to_numpy()
    return roc_auc(engaged, truth)


def generate(
    settings: GeneratorSettings,
    out: str | Path,
    *,
    overwrite: bool = False,
    partitions: int | None = None,
    workers: int | None = None,
) -> GenerateSummary:
    """Generate `settings.rows` rows into `out` (atomically) and return what was written."""
    t0 = time.perf_counter()
    settings.validate()
    out = Path(out)
    if partitions is None:
        partitions = max(1, math.ceil(settings.rows / ROWS_PER_PARTITION))
    if not 1 <= partitions <= settings.rows:
        raise GeneratorError(f"partitions must be in [1, rows={settings.rows}], got {partitions}")
    workers = min(workers or os.cpu_count() or 1, partitions)
    if workers < 1:
        raise GeneratorError(f"workers must be >= 1, got {workers}")

    tmp = _prepare_output(out, overwrite)
    global _WORLD
    try:
        _WORLD = build_world(settings)
        jobs = [
            (settings, i, a, b, str(tmp))
            for i, (a, b) in enumerate(partition_bounds(settings.rows, partitions))
        ]
        results = []
        if workers == 1:
            for job in jobs:
                results.append(write_partition(*job))
                _log_progress(results[-1], partitions)
                interrupts.pause_point("generate")
        else:
            # fork: workers inherit the world instead of rebuilding it
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                for result in pool.map(write_partition, *zip(*jobs, strict=True)):
                    results.append(result)
                    _log_progress(result, partitions)
                    interrupts.pause_point("generate")
        summary = _summarise(settings, out, tmp, partitions, results)
        summary.seconds = round(time.perf_counter() - t0, 3)
        meta = asdict(summary)
        # timing and location vary between identical runs; keep _generator.json byte-identical
        meta.pop("seconds")
        meta.pop("out")
        write_json_atomic(tmp / "_generator.json", meta)
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _WORLD = None
    return summary


def _log_progress(result: dict, partitions: int) -> None:
    rows = result["rows"]
    log.info(
        "  partition %d/%d: %s train rows, %s test rows",
        result["index"] + 1,
        partitions,
        f"{rows['train']:,}",
        f"{rows['test']:,}",
    )


def _summarise(
    s: GeneratorSettings, out: Path, tmp: Path, partitions: int, results: list[dict]
) -> GenerateSummary:
    rows, files, label_rate, auc = {}, {}, {}, {}
    for split in ("train", "test"):
        n = sum(r["rows"][split] for r in results)
        rows[split] = n
        files[split] = [f"{split}/{r['name']}" for r in results]
        label_rate[split] = {
            kind: round(1.0 - sum(r["negatives"][split][kind] for r in results) / n, 6)
            if n
            else 0.0
            for kind in (*ENGAGEMENTS, "any")
        }
        auc[split] = best_auc(tmp, split) if n else None
        if auc[split] is not None:
            auc[split] = round(auc[split], 6)
    return GenerateSummary(
        out=str(out),
        settings=asdict(s),
        partitions=partitions,
        rows=rows,
        files=files,
        label_rate=label_rate,
        best_auc=auc,
    )


def load_summary(out: str | Path) -> GenerateSummary | None:
    """The summary saved by a complete earlier run in `out`, or None if there is none."""
    meta_path = Path(out) / "_generator.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("generator_version") != GENERATOR_VERSION:
        return None
    meta.pop("out", None)  # older files recorded it; the location is where the file is
    try:
        return GenerateSummary(out=str(out), **meta)
    except TypeError:  # written by another layout of the summary: not reusable
        return None


def format_summary(summary: GenerateSummary) -> str:
    """A few lines for the console: where the data went and what it holds."""
    rows, rate = summary.rows, summary.label_rate["train"]
    took = f" in {summary.seconds:.1f} s" if summary.seconds else ""
    lines = [
        f"generated {rows['train'] + rows['test']:,} rows{took} "
        f"(seed {summary.settings['seed']}, signal {summary.settings['signal']}) -> {summary.out}",
        f"  train: {rows['train']:,} rows in {len(summary.files['train'])} file(s); "
        f"test: {rows['test']:,} rows in {len(summary.files['test'])} file(s)",
        "  label rate (train): " + ", ".join(f"{k} {v:.1%}" for k, v in rate.items()),
    ]
    if summary.best_auc.get("test") is not None:
        lines.append(
            f"  best achievable AUC on test (true probabilities, any engagement): "
            f"{summary.best_auc['test']:.4f}"
        )
    lines.append(
        f"  files: {summary.out}/{{train,test}}/part-*.parquet, "
        f"_truth/ (true probabilities), _generator.json"
    )
    return "\n".join(lines)
