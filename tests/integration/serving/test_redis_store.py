"""The Redis feature store against a real redis-server: loader, identical features, serving."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recsys.export.reader import load_bundle
from serving.client import RecommenderClient
from serving.feature_store import FeatureStoreError, MemoryFeatureStore, RedisFeatureStore
from serving.feature_store.layout import ENTITIES, SNAPSHOTS
from serving.model import bundle_id
from serving.server import start_background

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def loaded(serving_bundle: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The bundle's features written into Redis by the loader command."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.feature_store.load",
            f"bundle={serving_bundle}",
            f"redis_url={redis_url}",
            f"hydra.run.dir={tmp_path_factory.mktemp('load')}",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "loaded" in run.stdout
    return redis_url


def test_redis_and_memory_stores_return_identical_features(
    serving_bundle: Path, loaded: str
) -> None:
    bundle = load_bundle(serving_bundle)
    memory = MemoryFeatureStore(bundle)
    redis = RedisFeatureStore(loaded, "recsys", bundle_id(serving_bundle))
    try:
        for snapshot in SNAPSHOTS:
            for entity in ENTITIES:
                ids, _ = memory.all_records(snapshot, entity)
                assert len(ids) > 100
                query = [*ids[::-1], "never-seen", ids[0]]
                a, found_a = memory.lookup(snapshot, entity, query)
                b, found_b = redis.lookup(snapshot, entity, query)
                assert memory.layout(snapshot, entity) == redis.layout(snapshot, entity)
                assert a.tobytes() == b.tobytes()
                np.testing.assert_array_equal(found_a, found_b)
                assert found_b.tolist() == [True] * len(ids) + [False, True]
                assert not b[-2].tobytes().strip(b"\0")  # unknown id: the all-zero record
    finally:
        redis.close()


def test_a_bundle_not_loaded_into_redis_is_refused_by_name(redis_url: str) -> None:
    with pytest.raises(FeatureStoreError, match=re.escape("serving.feature_store.load")):
        RedisFeatureStore(redis_url, "recsys", "0123456789abcdef")
    with pytest.raises(FeatureStoreError, match=re.escape("redis_url=redis://127.0.0.1:1/0")):
        RedisFeatureStore("redis://127.0.0.1:1/0", "recsys", "x")


def test_server_on_redis_recommends_what_the_memory_server_does(
    serving_bundle: Path, loaded: str
) -> None:
    users = ["u1", "u2", "u5", "stranger"]
    answers = {}
    for store in ("memory", "redis"):
        settings = {
            "bundle": str(serving_bundle),
            "feature_store": store,
            "redis_url": loaded,
            "metrics_port": None,
        }
        with start_background(settings) as handle, RecommenderClient(handle.target) as client:
            assert client.status().feature_store == store
            answers[store] = [client.recommend(u, k=6, context={"device": "tablet"}) for u in users]
    for a, b in zip(answers["memory"], answers["redis"], strict=True):
        assert a.items == b.items and a.fallback == b.fallback
        # the final score includes the recall score, from the user tower run per request
        # (redis) or batched at load (memory): equal up to float rounding
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
