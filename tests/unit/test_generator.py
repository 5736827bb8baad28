"""The RecSys 2021 generator: schema, determinism, planted signal, shape, bad input."""

import hashlib
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys.data import generator as gen
from recsys.data.generator import (
    BLOCK_ROWS,
    GeneratorError,
    GeneratorSettings,
    generate,
    load_summary,
    roc_auc,
)
from recsys.data.recsys2021 import ENGAGEMENTS, RAW_SCHEMA

# small entity tables keep each run well under a second
SMALL = GeneratorSettings(
    rows=4000,
    num_users=300,
    num_tweets=800,
    num_hashtags=50,
    num_domains=20,
    num_text_tokens=500,
)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _read(out: Path, split: str = "train") -> pa.Table:
    files = sorted((out / split).glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def test_writes_the_24_challenge_columns_in_order(tmp_path: Path) -> None:
    summary = generate(SMALL, tmp_path / "d")
    for split in ("train", "test"):
        table = _read(tmp_path / "d", split)
        assert table.schema.equals(RAW_SCHEMA)
        assert len(table.schema) == 24
        assert table.num_rows == summary.rows[split]
    assert summary.rows["train"] + summary.rows["test"] == SMALL.rows
    assert summary.rows["test"] == pytest.approx(0.1 * SMALL.rows, rel=0.2)
    assert summary.columns == RAW_SCHEMA.names


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    generate(SMALL, tmp_path / "a")
    generate(SMALL, tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    generate(replace(SMALL, seed=1), tmp_path / "c")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_partition_count_does_not_change_the_rows(tmp_path: Path) -> None:
    # more rows than one block, so partition edges fall inside blocks
    s = replace(SMALL, rows=BLOCK_ROWS + 3001)
    generate(s, tmp_path / "one", partitions=1)
    generate(s, tmp_path / "three", partitions=3, workers=1)
    for split in ("train", "test"):
        assert _read(tmp_path / "one", split).equals(_read(tmp_path / "three", split))
    assert len(list((tmp_path / "three" / "train").glob("*.parquet"))) == 3


def test_worker_count_does_not_change_the_bytes(tmp_path: Path) -> None:
    s = replace(SMALL, rows=9000)
    generate(s, tmp_path / "w1", partitions=3, workers=1)
    generate(s, tmp_path / "w2", partitions=3, workers=2)
    assert _digest(tmp_path / "w1") == _digest(tmp_path / "w2")


def test_truth_side_file_is_row_aligned_and_calibrated(tmp_path: Path) -> None:
    s = replace(SMALL, rows=30_000)
    generate(s, tmp_path / "d")
    rows, truth = _read(tmp_path / "d"), _read(tmp_path / "d" / "_truth")
    assert rows.num_rows == truth.num_rows
    for kind in ENGAGEMENTS:
        engaged = rows[f"{kind}_timestamp"].is_valid().to_numpy(zero_copy_only=False)
        p = truth[f"p_{kind}"].to_numpy()
        assert engaged.mean() == pytest.approx(p.mean(), abs=0.01)
        # an engaged row had a higher true probability, on average, than a non-engaged one
        assert p[engaged].mean() > p[~engaged].mean()


def test_planted_signal_sets_the_best_achievable_auc(tmp_path: Path) -> None:
    planted = generate(replace(SMALL, rows=20_000), tmp_path / "s1")
    noise = generate(replace(SMALL, rows=20_000, signal=0.0), tmp_path / "s0")
    assert planted.best_auc["train"] > 0.7
    assert noise.best_auc["train"] == pytest.approx(0.5, abs=0.001)


def test_engagement_timestamps_follow_the_tweet(tmp_path: Path) -> None:
    generate(SMALL, tmp_path / "d")
    rows = _read(tmp_path / "d")
    for kind in ENGAGEMENTS:
        ts = rows[f"{kind}_timestamp"]
        assert 0 < ts.null_count < rows.num_rows
        valid = pc.is_valid(ts)
        later = pc.greater(pc.filter(ts, valid), pc.filter(rows["tweet_timestamp"], valid))
        assert pc.all(later).as_py()


def test_tweets_keep_their_content_and_popularity_is_skewed(tmp_path: Path) -> None:
    generate(replace(SMALL, rows=20_000), tmp_path / "d")
    rows = _read(tmp_path / "d").to_pydict()
    content: dict[str, tuple] = {}
    for i, tweet in enumerate(rows["tweet_id"]):
        record = (rows["text_tokens"][i], rows["engaged_with_user_id"][i], rows["language"][i])
        assert content.setdefault(tweet, record) == record
    counts = sorted(Counter(rows["enaging_user_id"]).values(), reverse=True)
    assert counts[0] > 20 * np.median(counts)
    tokens = rows["text_tokens"][0].split("\t")
    assert tokens[0] == "101" and tokens[-1] == "102"
    media = {m for m in rows["present_media"] if m is not None}
    assert media <= {"Photo", "Video", "GIF", "Photo\tPhoto", "Photo\tVideo"}
    assert None in rows["hashtags"]
    assert all(len(u) == 32 for u in rows["enaging_user_id"][:100])


def _indices(rows: pa.Table, world: gen.World) -> tuple[np.ndarray, np.ndarray]:
    """(user index, tweet index) in `world` of every row."""
    user = pc.index_in(rows["enaging_user_id"], value_set=world.user_id).to_numpy()
    tweet = pc.index_in(rows["tweet_id"], value_set=world.tweet_id).to_numpy()
    return user, tweet


def _engaged(rows: pa.Table) -> np.ndarray:
    engaged = np.zeros(rows.num_rows, dtype=bool)
    for kind in ENGAGEMENTS:
        engaged |= rows[f"{kind}_timestamp"].is_valid().to_numpy(zero_copy_only=False)
    return engaged


def test_personal_exposure_shows_followed_authors_near_the_users_taste(tmp_path: Path) -> None:
    s = replace(SMALL, rows=20_000, num_users=2_000, num_tweets=10_000)
    world = gen.build_world(s)
    shares, affinities, users, flags = {}, {}, {}, {}
    for p in (0.0, 0.6, 1.0):
        out = tmp_path / f"p{p}"
        generate(replace(s, personal_exposure=p), out)
        rows = pa.concat_tables([_read(out, "train"), _read(out, "test")])
        user, tweet = _indices(rows, world)
        author = world.tweet_author[tweet]
        followed = (world.user_follows[user] == author[:, None]).any(axis=1)
        shares[p] = followed.mean()
        affinities[p] = np.einsum("ij,ij->i", world.user_taste[user], world.tweet_topic[tweet])
        users[p] = np.sort(user)
        flags[p] = (user, author, rows["engagee_follows_engager"].to_numpy(), followed)
    # every personal row is a followed author's tweet; popularity rows rarely are
    assert shares[1.0] == 1.0
    assert shares[0.0] < 0.1
    assert shares[0.6] == pytest.approx(0.6 + 0.4 * shares[0.0], abs=0.03)
    # follows are chosen near the taste, so shown tweets match the user's taste far better
    # than popularity-drawn ones (whose mean cosine is ~0)
    assert abs(affinities[0.0].mean()) < 0.03
    assert affinities[1.0].mean() > 0.15
    assert affinities[0.6].mean() > 0.5 * affinities[1.0].mean()
    # the knob changes which tweets are shown, not who is shown them
    assert np.array_equal(users[0.0], users[0.6])
    # engagee_follows_engager is a property of the (user, author) pair, mostly mutual follows
    user, author, flag, followed = flags[0.6]
    pair = user.astype(np.int64) * s.num_users + author
    _, first = np.unique(pair, return_inverse=True)
    per_pair = np.zeros((first.max() + 1, 2))
    np.add.at(per_pair, first, np.stack([flag, np.ones_like(flag)], axis=1))
    assert set(np.unique(per_pair[:, 0] / per_pair[:, 1])) <= {0.0, 1.0}
    assert flag[followed].mean() > 0.3 > flag[~followed].mean()
    assert 0.2 < flag.mean() < 0.4


def _history_vs_popularity_recall(out: Path, s: GeneratorSettings, k: int) -> tuple[float, float]:
    """Mean recall@k on test/ positives (users and tweets seen in train/) of two model-free
    recommenders: the user's engaged train authors' tweets (most popular first) and the
    global popularity list of train positives."""
    world = gen.build_world(s)
    train, test = _read(out, "train"), _read(out, "test")
    tr_user, tr_tweet = _indices(train, world)
    te_user, te_tweet = _indices(test, world)
    pos = _engaged(train)
    popularity = np.bincount(tr_tweet[pos], minlength=s.num_tweets).astype(np.float64)
    seen = np.bincount(tr_tweet, minlength=s.num_tweets) > 0
    user_author = np.zeros((s.num_users, s.num_users), dtype=np.float64)
    np.add.at(user_author, (tr_user[pos], world.tweet_author[tr_tweet[pos]]), 1.0)
    keep = _engaged(test) & seen[te_tweet] & (user_author.sum(axis=1)[te_user] > 0)
    held_out: dict[int, set[int]] = {}
    for u, t in zip(te_user[keep].tolist(), te_tweet[keep].tolist(), strict=True):
        held_out.setdefault(u, set()).add(t)
    tie_break = popularity / (popularity.max() + 1.0)  # < 1: never outranks one more engagement
    top_popular = set(np.argsort(-popularity, kind="stable")[:k].tolist())
    personal, popular = [], []
    for u, items in held_out.items():
        score = np.where(seen, user_author[u, world.tweet_author] + tie_break, -1.0)
        top = set(np.argsort(-score, kind="stable")[:k].tolist())
        personal.append(len(top & items) / len(items))
        popular.append(len(top_popular & items) / len(items))
    return float(np.mean(personal)), float(np.mean(popular))


def test_a_users_history_predicts_its_held_out_tweets_only_with_personal_exposure(
    tmp_path: Path,
) -> None:
    """The generator property behind "two-tower recall beats popularity" (docs/generator.md):
    with personal exposure, the authors a user engaged with in train predict its test
    positives better than the global popularity list; with popularity-only exposure they do
    not, so no personalised retriever could win there."""
    s = replace(SMALL, rows=60_000, num_users=2_000, num_tweets=10_000)
    recall = {}
    for p in (0.0, 0.6):
        generate(replace(s, personal_exposure=p), tmp_path / f"p{p}")
        recall[p] = _history_vs_popularity_recall(tmp_path / f"p{p}", s, k=50)
    personal, popular = recall[0.6]
    assert personal > popular + 0.1, recall
    personal0, popular0 = recall[0.0]
    assert personal0 < popular0, recall


def test_summary_is_saved_with_the_data(tmp_path: Path) -> None:
    summary = generate(SMALL, tmp_path / "d")
    saved = load_summary(tmp_path / "d")
    assert saved is not None
    assert saved.rows == summary.rows
    assert saved.label_rate == summary.label_rate
    assert 0.0 < summary.label_rate["train"]["any"] < 1.0


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"rows": 0}, "rows"),
        ({"rows": -5}, "rows"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"signal": -1.0}, "signal"),
        ({"num_users": 0}, "num_users"),
        ({"personal_exposure": 1.5}, "personal_exposure"),
        ({"personal_exposure": -0.1}, "personal_exposure"),
        ({"follows_per_user": 0}, "follows_per_user"),
        ({"follows_per_user": 2.5}, "follows_per_user"),
    ],
)
def test_bad_settings_fail_naming_the_setting(tmp_path: Path, change: dict, fragment: str) -> None:
    with pytest.raises(GeneratorError, match=fragment):
        generate(replace(SMALL, **change), tmp_path / "d")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    generate(SMALL, tmp_path / "d")
    before = _digest(tmp_path / "d")
    with pytest.raises(GeneratorError, match="overwrite=true"):
        generate(replace(SMALL, seed=3), tmp_path / "d")
    assert _digest(tmp_path / "d") == before
    generate(replace(SMALL, seed=3), tmp_path / "d", overwrite=True)
    assert _digest(tmp_path / "d") != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_unwritable_output_fails_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(GeneratorError, match=r"cannot write output .*file"):
        generate(SMALL, blocker / "d")


def test_a_failure_midway_leaves_no_partial_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = gen.write_partition

    def failing(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if Ctrl-C arrived during the second file
        return real(*args)

    monkeypatch.setattr(gen, "write_partition", failing)
    with pytest.raises(KeyboardInterrupt):
        generate(replace(SMALL, rows=6000), tmp_path / "d", partitions=3, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_roc_auc_matches_hand_computed_values() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert roc_auc(np.array([1, 1]), np.array([0.1, 0.2])) is None


def test_a_summary_from_another_layout_is_not_reused(tmp_path: Path) -> None:
    import json

    generate(SMALL, tmp_path / "d")
    meta_path = tmp_path / "d" / "_generator.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "out": "elsewhere", "unknown_field": 1}))
    assert load_summary(tmp_path / "d") is None
    meta_path.write_text(json.dumps({**meta, "out": "elsewhere"}))
    assert load_summary(tmp_path / "d").out == str(tmp_path / "d")
