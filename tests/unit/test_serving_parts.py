"""Serving pieces without a server: settings, record layouts, the memory store, the batcher."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch
from hydra import compose, initialize_config_dir

from recsys.config import CONF_DIR
from recsys.export.reader import FeatureSnapshot
from recsys.export.tensors import to_tensors
from serving.batcher import DeadlineExpired, RankBatcher
from serving.errors import RequestError, ServeConfigError
from serving.feature_store.base import MemoryFeatureStore
from serving.feature_store.layout import TableLayout, layout_of
from serving.server import settings_from
from serving.stages import check_k
from tests.helpers.processed_data import spec as processed_spec

# ------------------------------------------------------------------------- settings


def test_serve_config_composes_with_its_defaults_and_overrides() -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "serve", ["feature_store=redis", "remote.recall=127.0.0.1:7000", "+ports.ranking=7001"]
        )
    settings = settings_from(cfg)
    assert settings.feature_store == "redis"
    assert settings.remote.recall == "127.0.0.1:7000" and settings.remote.ranking is None
    assert settings.ports == {"ranking": 7001}
    assert settings.services == ["recommender", "recall", "ranking", "feature", "admin"]
    assert settings.host == "127.0.0.1" and settings.max_k == 100


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"no_such_key": 1}, "no_such_key"),
        ({"feature_store": "disk"}, "feature_store"),
        ({"services": ["recommender", "search"]}, "services"),
        ({"ports": {"ranking": 1}, "services": ["recommender"]}, "ports"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"candidate_count": 5000}, "candidate_count"),
        ({"tls": {"cert": "a.pem"}}, "tls"),
        ({"deadline_ms": "soon"}, "deadline_ms"),
    ],
)
def test_bad_settings_fail_naming_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ServeConfigError, match=message):
        settings_from({"bundle": "b", **overrides})


def test_k_bounds_name_the_field() -> None:
    check_k("k", 1, 10)
    check_k("candidate_count", 0, 10, allow_zero=True)
    for value in (0, -1, 11):
        with pytest.raises(RequestError, match=r"^k: must be in \[1, 10\]"):
            check_k("k", value, 10)


# ------------------------------------------------------------------ layout and store


def _snapshot() -> FeatureSnapshot:
    spec = processed_spec()
    users = pa.table(
        {
            "user": pa.array([2, 3, 4], pa.int64()),
            "user_raw": ["a", "b", "c"],
            "activity": pa.array([0.25, 0.5, 1.0], pa.float32()),
        }
    )
    items = pa.table(
        {
            "item": pa.array([2, 3], pa.int64()),
            "item_raw": ["x", "y"],
            "category": pa.array([5, 6], pa.int64()),
            "tags": pa.array([[3], [4, 5, 6, 7]], pa.list_(pa.int64())),  # cut to max_len 3
        }
    )
    return FeatureSnapshot(spec=spec, pipeline=None, users=users, items=items)  # type: ignore[arg-type]


def test_records_give_the_tensors_the_training_loader_gives() -> None:
    snap = _snapshot()
    layout = layout_of("ranker", "item", snap)
    assert [c.name for c in layout.columns] == ["item", "category", "tags"]
    records = layout.encode(snap.items)
    features = [snap.spec[n] for n in ("item", "category", "tags")]
    expected = to_tensors(snap.items, features)
    for name in ("item", "category", "tags"):
        got = layout.tensor(records, name)
        assert got.dtype == expected[name].dtype
        torch.testing.assert_close(got, expected[name], rtol=0, atol=0)
    assert TableLayout.from_json(layout.to_json()) == layout


def test_memory_store_looks_up_by_raw_id_with_zeros_for_unknown_ids() -> None:
    snap = _snapshot()
    store = MemoryFeatureStore(SimpleNamespace(ranker_features=snap, retrieval_features=snap))
    records, found = store.lookup("ranker", "user", ["c", "nobody", "a"])
    assert found.tolist() == [True, False, True]
    assert records["user"].tolist() == [4, 0, 2]
    np.testing.assert_array_equal(records["activity"], np.float32([1.0, 0.0, 0.25]))
    items, _ = store.lookup("retrieval", "item", ["y"])
    assert items["tags"].tolist() == [[4, 5, 6]]
    with pytest.raises(Exception, match="snapshot"):
        store.lookup("other", "user", ["a"])


# -------------------------------------------------------------------------- batcher


class FakeModel:
    """score = the `x` feature itself; remembers each forward's row count."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.fail = fail

    def score(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        time.sleep(0.01)  # long enough for concurrent requests to queue up
        if self.fail:
            raise ValueError("bad batch")
        self.batches.append(len(batch["x"]))
        return batch["x"].numpy().astype(np.float32)


def test_batcher_shares_forward_passes_and_returns_each_request_its_rows() -> None:
    model, other = FakeModel(), FakeModel()
    batcher = RankBatcher(max_rows=1000)

    async def scenario() -> list[np.ndarray]:
        deadline = time.monotonic() + 10
        jobs = [
            batcher.score(
                model if i % 4 else other,
                {"x": torch.arange(i * 100, i * 100 + 5 + i, dtype=torch.float32)},
                deadline,
            )
            for i in range(12)
        ]
        return await asyncio.gather(*jobs)

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.close()
    for i, scores in enumerate(results):
        np.testing.assert_array_equal(scores, np.arange(i * 100, i * 100 + 5 + i))
    assert sum(model.batches) + sum(other.batches) == sum(5 + i for i in range(12))
    assert len(model.batches) < 9  # requests shared passes (9 requests of `model`)


def test_batcher_drops_expired_work_and_fails_only_the_failing_requests() -> None:
    batcher = RankBatcher(max_rows=1000)

    async def scenario() -> tuple[BaseException | None, BaseException | None, np.ndarray]:
        late = batcher.score(FakeModel(), {"x": torch.ones(3)}, time.monotonic() - 1)
        bad = batcher.score(FakeModel(fail=True), {"x": torch.ones(3)}, time.monotonic() + 5)
        good = batcher.score(FakeModel(), {"x": torch.ones(2)}, time.monotonic() + 5)
        results = await asyncio.gather(late, bad, good, return_exceptions=True)
        return results[0], results[1], results[2]

    try:
        late, bad, good = asyncio.run(scenario())
    finally:
        batcher.close()
    assert isinstance(late, DeadlineExpired)
    assert isinstance(bad, ValueError)
    np.testing.assert_array_equal(good, np.ones(2, np.float32))


class OverlapModel(FakeModel):
    """Records the most forward passes ever running at once."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def score(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return super().score(batch)
        finally:
            with self.lock:
                self.running -= 1


def test_inline_forward_runs_when_idle_and_never_beside_another() -> None:
    model = OverlapModel()
    batcher = RankBatcher(max_rows=1000)
    try:
        assert batcher.score_inline(model, {"x": torch.ones(4)}).tolist() == [1.0] * 4
        with batcher._busy:  # a forward pass in progress: the caller must queue instead
            assert batcher.score_inline(model, {"x": torch.ones(4)}) is None

        async def scenario() -> list[np.ndarray]:
            loop = asyncio.get_running_loop()

            def inline_or_none(i: int) -> np.ndarray | None:
                return batcher.score_inline(model, {"x": torch.full((3,), float(i))})

            inline = [loop.run_in_executor(None, inline_or_none, i) for i in range(8)]
            queued = [
                batcher.score(model, {"x": torch.full((2,), float(i))}, time.monotonic() + 10)
                for i in range(8)
            ]
            return await asyncio.gather(*inline, *queued)

        results = asyncio.run(scenario())
    finally:
        batcher.close()
    assert model.most == 1  # inline and batched forward passes never overlapped
    inline, queued = results[:8], results[8:]
    for i, r in enumerate(inline):
        assert r is None or r.tolist() == [float(i)] * 3
    for i, r in enumerate(queued):
        assert r.tolist() == [float(i)] * 2


class ThreadsModel(FakeModel):
    """Records which thread ran each forward pass and how many rows it had."""

    def __init__(self) -> None:
        super().__init__()
        self.passes: list[tuple[str, int]] = []

    def score(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        self.passes.append((threading.current_thread().name, len(batch["x"])))
        return super().score(batch)


def test_two_forward_threads_split_a_lone_request_and_keep_requests_whole_under_load() -> None:
    model = ThreadsModel()
    batcher = RankBatcher(max_rows=250, threads=2)

    async def lone() -> np.ndarray:
        return await batcher.score(model, {"x": torch.arange(200.0)}, time.monotonic() + 10)

    async def crowd() -> list[np.ndarray]:
        deadline = time.monotonic() + 10
        return await asyncio.gather(
            *(
                batcher.score(model, {"x": torch.arange(i * 1000.0, i * 1000.0 + 100)}, deadline)
                for i in range(8)
            )
        )

    try:
        np.testing.assert_array_equal(asyncio.run(lone()), np.arange(200.0))
        split = list(model.passes)
        model.passes.clear()
        results = asyncio.run(crowd())
    finally:
        batcher.close()
    # the lone request: two halves, one on each forward thread
    assert sorted(rows for _, rows in split) == [100, 100]
    assert {name for name, _ in split} == {"recsys-ranker-0", "recsys-ranker-1"}
    for i, scores in enumerate(results):
        np.testing.assert_array_equal(scores, np.arange(i * 1000.0, i * 1000.0 + 100))
    # under load: whole requests (the first may have been split), passes of at most 250+ rows
    assert sum(rows for _, rows in model.passes) == 800
    assert all(rows % 100 == 0 or rows % 50 == 0 for _, rows in model.passes)
    assert len(model.passes) < 9
    assert {name for name, _ in model.passes} == {"recsys-ranker-0", "recsys-ranker-1"}


def test_inline_with_two_forward_threads_runs_one_part_on_the_caller() -> None:
    model = ThreadsModel()
    batcher = RankBatcher(max_rows=1000, threads=2)
    try:
        scores = batcher.score_inline(model, {"x": torch.arange(100.0)})
        assert scores is not None
        np.testing.assert_array_equal(scores, np.arange(100.0))
        names = sorted(name for name, _ in model.passes)
        assert names[0] == threading.current_thread().name
        assert names[1].startswith("recsys-ranker-")
        assert [rows for _, rows in model.passes] == [50, 50]
        with batcher._state:
            batcher._running += 1  # a forward pass in progress: the caller must queue instead
        try:
            assert batcher.score_inline(model, {"x": torch.ones(64)}) is None
        finally:
            with batcher._state:
                batcher._running -= 1
    finally:
        batcher.close()


def test_close_finishes_queued_work_and_stops_every_forward_thread() -> None:
    model = ThreadsModel()
    batcher = RankBatcher(max_rows=10_000, threads=2)

    async def scenario() -> list[np.ndarray]:
        deadline = time.monotonic() + 10
        jobs = [
            asyncio.ensure_future(batcher.score(model, {"x": torch.ones(40)}, deadline))
            for _ in range(6)
        ]
        await asyncio.sleep(0)  # every job queued
        closing = threading.Thread(target=batcher.close)
        closing.start()
        results = await asyncio.gather(*jobs)
        closing.join(timeout=10)
        assert not closing.is_alive(), "close() did not return"
        return results

    results = asyncio.run(scenario())
    assert [len(r) for r in results] == [40] * 6
    assert not any(t.is_alive() for t in batcher._workers)
