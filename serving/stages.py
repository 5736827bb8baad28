"""The recommender's stages behind one interface, with two implementations each.

    recall.search(user_id, k, exclude, deadline)        -> Recalled
    ranking.rank(user_id, item_ids, context, deadline)  -> Ranked

`Local*` run the stage in this process on a pinned `ServingModel` (worker threads for feature
lookups, the user tower and Faiss; the shared RankBatcher for the ranker). `Grpc*` call a
Recall / Ranking server (serve config `remote.recall`, `remote.ranking`): the same request
path, each stage on its own machines. The Recommend handler cannot tell them apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
import numpy as np

from serving.batcher import RankBatcher
from serving.errors import RequestError
from serving.metrics import ServerMetrics
from serving.model import Recalled, ServingModel
from serving.proto.recsys.v1 import (
    feature_pb2,
    feature_pb2_grpc,
    ranking_pb2,
    ranking_pb2_grpc,
    recall_pb2,
    recall_pb2_grpc,
)

T = TypeVar("T")


class UpstreamError(RuntimeError):
    """A remote stage answered with an error; its status code is passed on."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Ranked:
    scores: np.ndarray
    features_ms: float = 0.0
    rank_ms: float = 0.0


class Recall(Protocol):
    async def search(
        self, user_id: str, k: int, exclude: set[str], deadline: float
    ) -> Recalled: ...


class Ranking(Protocol):
    async def rank(
        self, user_id: str, item_ids: Sequence[str], context: Mapping[str, str], deadline: float
    ) -> Ranked: ...


@dataclass
class Runtime:
    """What local stages share: worker threads, the ranker thread, metrics."""

    executor: ThreadPoolExecutor
    batcher: RankBatcher
    metrics: ServerMetrics

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


def _check_deadline(deadline: float, stage: str) -> None:
    if time.monotonic() >= deadline:  # expired work is not started
        raise TimeoutError(f"deadline passed before {stage}")


class LocalRecall:
    def __init__(self, runtime: Runtime, model: ServingModel) -> None:
        self.runtime, self.model = runtime, model

    async def search(self, user_id: str, k: int, exclude: set[str], deadline: float) -> Recalled:
        _check_deadline(deadline, "recall")
        recalled = await self.runtime.run(self.model.recall, user_id, None, k, exclude)
        self.runtime.metrics.stage("features", recalled.features_ms)
        self.runtime.metrics.stage("recall", recalled.recall_ms)
        return recalled

    async def search_vector(self, vector: np.ndarray, k: int, deadline: float) -> Recalled:
        _check_deadline(deadline, "recall")
        recalled = await self.runtime.run(self.model.recall, None, vector, k, set())
        self.runtime.metrics.stage("recall", recalled.recall_ms)
        return recalled


class LocalRanking:
    def __init__(self, runtime: Runtime, model: ServingModel) -> None:
        self.runtime, self.model = runtime, model

    async def rank(
        self, user_id: str, item_ids: Sequence[str], context: Mapping[str, str], deadline: float
    ) -> Ranked:
        _check_deadline(deadline, "ranking")
        batch, features_ms = await self.runtime.run(
            self.model.rank_inputs, user_id, item_ids, context
        )
        _check_deadline(deadline, "ranking")
        t0 = time.perf_counter()
        scores = await self.runtime.batcher.score(self.model, batch, deadline)
        rank_ms = (time.perf_counter() - t0) * 1e3
        self.runtime.metrics.stage("features", features_ms)
        self.runtime.metrics.stage("rank", rank_ms)
        return Ranked(scores, features_ms, rank_ms)


async def local_recommend(
    runtime: Runtime,
    model: ServingModel,
    user_id: str,
    k: int,
    exclude: set[str],
    context: Mapping[str, str],
    deadline: float,
) -> tuple[Recalled, Ranked | None]:
    """Recall then rank, both in-process: the same stages as LocalRecall + LocalRanking, but
    recall, the ranker's inputs and (when the ranker is idle) its forward pass are one
    worker-thread job, so a lone request takes two thread hand-offs instead of six (on a
    loaded machine each wake-up of another thread can cost a time slice)."""
    _check_deadline(deadline, "recall")
    recalled, batch, features_ms, scores, rank_ms = await runtime.run(
        model.prepare, user_id, k, exclude, context, runtime.batcher.score_inline
    )
    runtime.metrics.stage("features", recalled.features_ms + features_ms)
    runtime.metrics.stage("recall", recalled.recall_ms)
    if batch is None:
        return recalled, None
    if scores is None:  # the ranker was busy: join the next shared forward pass
        _check_deadline(deadline, "ranking")
        t0 = time.perf_counter()
        scores = await runtime.batcher.score(model, batch, deadline)
        rank_ms = (time.perf_counter() - t0) * 1e3
    runtime.metrics.stage("rank", rank_ms)
    return recalled, Ranked(scores, features_ms, rank_ms)


def _timeout(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


def _upstream(e: grpc.aio.AioRpcError, where: str) -> Exception:
    code = e.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return UpstreamError(code, e.details() or where)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TimeoutError(f"{where}: deadline exceeded")
    passed = code if code == grpc.StatusCode.RESOURCE_EXHAUSTED else grpc.StatusCode.UNAVAILABLE
    return UpstreamError(passed, f"{where}: {code.name}: {e.details()}")


class GrpcRecall:
    def __init__(self, channel: grpc.aio.Channel, target: str) -> None:
        self.stub = recall_pb2_grpc.RecallStub(channel)
        self.target = target

    async def search(self, user_id: str, k: int, exclude: set[str], deadline: float) -> Recalled:
        t0 = time.perf_counter()
        request = recall_pb2.SearchRequest(user_id=user_id, k=k + len(exclude))
        try:
            reply = await self.stub.Search(request, timeout=_timeout(deadline))
        except grpc.aio.AioRpcError as e:
            raise _upstream(e, f"recall at {self.target}") from e
        pairs = [(it.item_id, it.score) for it in reply.items if it.item_id not in exclude][:k]
        ms = (time.perf_counter() - t0) * 1e3
        return Recalled(
            [p[0] for p in pairs],
            np.asarray([p[1] for p in pairs], np.float32),
            reply.user_found,
            0.0,
            ms,
        )


class GrpcRanking:
    def __init__(self, channel: grpc.aio.Channel, target: str) -> None:
        self.stub = ranking_pb2_grpc.RankingStub(channel)
        self.target = target

    async def rank(
        self, user_id: str, item_ids: Sequence[str], context: Mapping[str, str], deadline: float
    ) -> Ranked:
        t0 = time.perf_counter()
        request = ranking_pb2.RankRequest(user_id=user_id, item_ids=item_ids, context=context)
        try:
            reply = await self.stub.Rank(request, timeout=_timeout(deadline))
        except grpc.aio.AioRpcError as e:
            raise _upstream(e, f"ranking at {self.target}") from e
        if len(reply.scores) != len(item_ids):
            raise UpstreamError(
                grpc.StatusCode.INTERNAL,
                f"ranking at {self.target} returned {len(reply.scores)} scores for "
                f"{len(item_ids)} items",
            )
        return Ranked(np.asarray(reply.scores, np.float32), 0.0, (time.perf_counter() - t0) * 1e3)


class GrpcFeatures:
    """The Feature service over gRPC (the recommender does not need it on its request path;
    it is here so every stage has both implementations, e.g. for a caller's own ranker)."""

    def __init__(self, channel: grpc.aio.Channel, target: str) -> None:
        self.stub = feature_pb2_grpc.FeatureStub(channel)
        self.target = target

    async def user_features(
        self, ids: Sequence[str], snapshot: str, deadline: float
    ) -> feature_pb2.FeaturesResponse:
        request = feature_pb2.FeaturesRequest(ids=ids, snapshot=snapshot)
        try:
            return await self.stub.GetUserFeatures(request, timeout=_timeout(deadline))
        except grpc.aio.AioRpcError as e:
            raise _upstream(e, f"feature at {self.target}") from e


def check_k(name: str, value: int, maximum: int, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if value < low or value > maximum:
        raise RequestError(name, f"must be in [{low}, {maximum}], got {value}")
