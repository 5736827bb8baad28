"""`python -m serving.server bundle=<dir>`: the recsys.v1 services on grpc.aio.

One process hosts Recommender, Recall, Ranking, Feature and Admin by default (conf/serve.yaml
`services`), each on `port` unless `ports` gives it its own; `remote.recall` / `remote.ranking`
make the recommender call those stages over gRPC instead of in-process. Every port also
serves `grpc.health.v1` (NOT_SERVING until the bundle is loaded and warmed) and server
reflection. Every call goes through `ServingApp.call`: admission (at most `max_concurrent` in
progress, RESOURCE_EXHAUSTED at once beyond), a deadline (the client's or `deadline_ms`,
whichever is sooner), status mapping (INVALID_ARGUMENT naming the field, never a crash) and
metrics. SIGTERM (or Ctrl-C) stops admitting calls, drains those in progress for up to
`grace_seconds` and exits 0.

From Python (tests, the end-to-end pipeline):

    with start_background({"bundle": "bundles/demo"}) as handle:   # free loopback port
        RecommenderClient(f"127.0.0.1:{handle.port}").recommend("u1", k=10)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import faiss
import grpc
import hydra
import numpy as np
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from omegaconf import DictConfig, OmegaConf

from recsys.cli import run_task
from recsys.config import CONF_DIR, register_configs
from recsys.config.schema import ServeConfig, ServeRemoteConfig, ServeTlsConfig
from recsys.errors import RecsysError
from serving.batcher import DeadlineExpired, RankBatcher
from serving.errors import NotReady, RequestError, ServeConfigError
from serving.feature_store.layout import SNAPSHOTS, FeatureStoreError
from serving.metrics import ServerMetrics
from serving.model import ServingModel
from serving.proto.recsys.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    feature_pb2,
    feature_pb2_grpc,
    ranking_pb2,
    ranking_pb2_grpc,
    recall_pb2,
    recall_pb2_grpc,
    recommender_pb2,
    recommender_pb2_grpc,
)
from serving.stages import (
    GrpcRanking,
    GrpcRecall,
    LocalRanking,
    LocalRecall,
    Ranked,
    Ranking,
    Recall,
    Runtime,
    UpstreamError,
    check_k,
    local_recommend,
)

log = logging.getLogger(__name__)
register_configs()
T = TypeVar("T")

SERVICES = ("recommender", "recall", "ranking", "feature", "admin")
SERVICE_NAMES = {
    "recommender": recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name,
    "recall": recall_pb2.DESCRIPTOR.services_by_name["Recall"].full_name,
    "ranking": ranking_pb2.DESCRIPTOR.services_by_name["Ranking"].full_name,
    "feature": feature_pb2.DESCRIPTOR.services_by_name["Feature"].full_name,
    "admin": admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
}
DEADLINE_SLACK_S = 0.05  # gRPC's clock and ours may disagree by a few ms at the deadline
RELOAD_BUDGET_S = 600.0  # a reload loads and warms a whole bundle: not bound by deadline_ms
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ReloadRefused(RuntimeError):
    """A bundle that failed to load or warm up; the old one keeps serving."""


# ------------------------------------------------------------------------- settings


def settings_from(cfg: DictConfig | Mapping[str, Any] | ServeConfig) -> ServeConfig:
    """Typed, validated settings from a composed `serve` config or a plain mapping of its keys
    (missing keys take the schema defaults; `paths` and `hydra` are ignored)."""
    if isinstance(cfg, ServeConfig):
        settings = cfg
    else:
        node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
        names = {f.name for f in fields(ServeConfig)} - {"paths"}
        unknown = sorted(set(node.keys()) - names - {"paths", "hydra"})
        if unknown:
            raise ServeConfigError(f"unknown serve setting(s) {unknown}")
        picked = {}
        for name in names & set(node.keys()):
            value = OmegaConf.select(node, name)  # resolves interpolations of this key only
            picked[name] = (
                OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            )
        try:
            merged = OmegaConf.merge(OmegaConf.structured(ServeConfig), picked)
            merged.paths = None
            settings = OmegaConf.to_object(merged)
        except Exception as e:  # OmegaConf's validation errors name the key
            raise ServeConfigError(f"serve settings: {e}") from e
    assert isinstance(settings, ServeConfig)
    if isinstance(settings.remote, dict):
        settings.remote = ServeRemoteConfig(**settings.remote)
    if isinstance(settings.tls, dict):
        settings.tls = ServeTlsConfig(**settings.tls)
    validate(settings)
    return settings


def validate(s: ServeConfig) -> None:
    bad = sorted(set(s.services) - set(SERVICES))
    if bad or not s.services:
        raise ServeConfigError(f"services {list(s.services)}: each must be one of {SERVICES}")
    bad = sorted(set(s.ports) - set(s.services))
    if bad:
        raise ServeConfigError(f"ports names services this process does not host: {bad}")
    if s.feature_store not in ("memory", "redis"):
        raise ServeConfigError(f"feature_store {s.feature_store!r} is not memory or redis")
    for key in (
        "max_k",
        "candidate_count",
        "max_candidates",
        "deadline_ms",
        "max_concurrent",
        "max_message_bytes",
        "workers",
        "faiss_threads",
        "max_rank_batch",
    ):
        if getattr(s, key) < 1:
            raise ServeConfigError(f"{key} must be >= 1, got {getattr(s, key)}")
    if s.warmup_requests < 0 or s.grace_seconds < 0 or s.user_vector_table_mb < 0:
        raise ServeConfigError(
            "warmup_requests, grace_seconds and user_vector_table_mb must be >= 0"
        )
    if s.candidate_count > s.max_candidates:
        raise ServeConfigError("candidate_count must be <= max_candidates")
    for key in ("torch_threads", "ranker_threads"):
        if getattr(s, key) is not None and getattr(s, key) < 1:
            raise ServeConfigError(f"{key} must be >= 1 or null, got {getattr(s, key)}")
    if bool(s.tls.cert) != bool(s.tls.key) or (s.tls.client_ca and not s.tls.cert):
        raise ServeConfigError("tls: set cert and key together (client_ca needs both)")
    for key in ("cert", "key", "client_ca"):
        value = getattr(s.tls, key)
        if value and not Path(value).is_file():
            raise ServeConfigError(f"tls.{key}={value} is not a file")


# ------------------------------------------------------------------------------ app


class ServingApp:
    """The servers, the loaded model and everything a call goes through."""

    def __init__(self, settings: ServeConfig) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        self.model: ServingModel | None = None
        self.in_flight = 0
        self.ports: dict[str, int] = {}
        self.metrics_port: int | None = None
        # tests set this to slow calls down (overload, reload under load); None in service
        self.hook: Callable[[str], Awaitable[None]] | None = None
        self._servers: list[grpc.aio.Server] = []
        # each server's health servicer and the names it answers for ("" = the server)
        self._health: list[tuple[health.aio.HealthServicer, list[str]]] = []
        self._channels: list[grpc.aio.Channel] = []
        self._remote_recall: Recall | None = None
        self._remote_ranking: Ranking | None = None
        self._reload_lock: asyncio.Lock | None = None
        self._retired: list[ServingModel] = []
        self.runtime: Runtime | None = None
        self._torch_threads_before = 0  # start() records it, stop() restores it

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> dict[str, int]:
        """Bind every port and answer health (NOT_SERVING) and reflection; no bundle yet."""
        s = self.settings
        cpus = os.cpu_count() or 1
        ranker_threads = s.ranker_threads or cpus
        # set once, before any thread of ours exists: every thread starts with this count;
        # stop() gives the process its count back (start_background runs in a caller's process)
        self._torch_threads_before = torch.get_num_threads()
        torch.set_num_threads(s.torch_threads or max(1, cpus // ranker_threads))
        faiss.omp_set_num_threads(s.faiss_threads)
        self.runtime = Runtime(
            ThreadPoolExecutor(s.workers, thread_name_prefix="recsys-worker"),
            RankBatcher(s.max_rank_batch, self.metrics.batch_rows.observe, ranker_threads),
            self.metrics,
        )
        self._reload_lock = asyncio.Lock()
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
        ]
        for name, target in (("recall", s.remote.recall), ("ranking", s.remote.ranking)):
            if target:
                channel = grpc.aio.insecure_channel(target, options=options)
                self._channels.append(channel)
                if name == "recall":
                    self._remote_recall = GrpcRecall(channel, target)
                else:
                    self._remote_ranking = GrpcRanking(channel, target)
        groups: dict[int, list[str]] = {}
        for service in s.services:
            groups.setdefault(int(s.ports.get(service, s.port)), []).append(service)
        for port, services in groups.items():
            server = grpc.aio.server(options=options)
            self._add_services(server, services)
            bound = self._bind(server, port)
            if bound == 0:
                # an unstarted server holds grpc's poller thread until it is collected; the
                # exception's traceback would keep it alive through this frame
                await server.stop(None)
                del server
                raise ServeConfigError(f"cannot listen on {s.host}:{port} (port in use?)")
            await server.start()
            self._servers.append(server)
            for service in services:
                self.ports[service] = bound
            log.info(
                "listening for %s on %s:%d (health NOT_SERVING until loaded)",
                ", ".join(services),
                s.host,
                bound,
            )
        await self._set_health(NOT_SERVING)  # until a bundle is loaded and warmed
        if s.metrics_port is not None:
            self.metrics_port = self.metrics.serve_http(s.host, s.metrics_port)
        return self.ports

    def _add_services(self, server: grpc.aio.Server, services: list[str]) -> None:
        adders = {
            "recommender": lambda: recommender_pb2_grpc.add_RecommenderServicer_to_server(
                RecommenderService(self), server
            ),
            "recall": lambda: recall_pb2_grpc.add_RecallServicer_to_server(
                RecallService(self), server
            ),
            "ranking": lambda: ranking_pb2_grpc.add_RankingServicer_to_server(
                RankingService(self), server
            ),
            "feature": lambda: feature_pb2_grpc.add_FeatureServicer_to_server(
                FeatureService(self), server
            ),
            "admin": lambda: admin_pb2_grpc.add_AdminServicer_to_server(AdminService(self), server),
        }
        for service in services:
            adders[service]()
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        names = [SERVICE_NAMES[x] for x in services]
        self._health.append((checker, ["", *names]))
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )

    def _bind(self, server: grpc.aio.Server, port: int) -> int:
        """The bound port, or 0 when `host:port` cannot be bound."""
        s = self.settings
        address = f"{s.host}:{port}"
        if s.tls.cert:
            ca = Path(s.tls.client_ca).read_bytes() if s.tls.client_ca else None
            credentials = grpc.ssl_server_credentials(
                [(Path(s.tls.key).read_bytes(), Path(s.tls.cert).read_bytes())],
                root_certificates=ca,
                require_client_auth=ca is not None,
            )
            add = lambda: server.add_secure_port(address, credentials)  # noqa: E731
        else:
            add = lambda: server.add_insecure_port(address)  # noqa: E731
        try:
            return int(add())  # 0 when the address cannot be bound
        except RuntimeError:  # newer grpcio raises instead
            return 0

    async def _set_health(self, status: int) -> None:
        for checker, names in self._health:
            for name in names:
                await checker.set(name, status)

    async def load(self, path: str | None = None) -> ServingModel:
        """Load and warm the bundle (in a thread), then answer SERVING."""
        path = path or self.settings.bundle
        model = await asyncio.to_thread(ServingModel.load, path, self.settings)
        self._install(model)
        await self._set_health(SERVING)
        return model

    def _install(self, model: ServingModel) -> None:
        old, self.model = self.model, model  # one assignment: calls see the old or the new
        self.metrics.set_model(model.version, str(model.path))
        if old is not None:
            self._retired.append(old)  # closed at stop: calls in progress may still use it

    async def reload(self, path: str) -> tuple[ServingModel, str]:
        assert self._reload_lock is not None
        async with self._reload_lock:
            previous = self.model.version if self.model else ""
            try:
                model = await asyncio.to_thread(ServingModel.load, path, self.settings)
            except (RecsysError, FeatureStoreError, OSError, ValueError) as e:
                self.metrics.reloads.labels("refused").inc()
                log.warning("reload of %s refused; still serving %s: %s", path, previous, e)
                raise ReloadRefused(f"bundle {path} refused, still serving {previous}: {e}") from e
            self._install(model)
            self.metrics.reloads.labels("ok").inc()
            log.info("reloaded: %s -> %s", previous, model.version)
            return model, previous

    async def stop(self, grace: float | None = None) -> None:
        """Stop admitting calls, let those in progress finish (up to `grace` s), free all."""
        grace = self.settings.grace_seconds if grace is None else grace
        for checker, _ in self._health:
            await checker.enter_graceful_shutdown()
        await asyncio.gather(*(server.stop(grace) for server in self._servers))
        self._servers.clear()
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        self.metrics.stop_http()
        if self.runtime is not None:
            self.runtime.batcher.close()
            self.runtime.executor.shutdown(wait=True)
            self.runtime = None
            torch.set_num_threads(self._torch_threads_before)
        for model in [*self._retired, *([self.model] if self.model else [])]:
            model.close()
        self._retired.clear()

    # ---------------------------------------------------------------- calls

    def current(self) -> ServingModel:
        if self.model is None:
            raise NotReady("no bundle loaded yet")
        return self.model

    def stages(self, model: ServingModel) -> tuple[Recall, Ranking]:
        assert self.runtime is not None
        recall = self._remote_recall or LocalRecall(self.runtime, model)
        ranking = self._remote_ranking or LocalRanking(self.runtime, model)
        return recall, ranking

    async def call(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        work: Callable[[float], Awaitable[T]],
        budget: float | None = None,
    ) -> T:
        """Run `work(deadline)` under admission control, a deadline and status mapping."""
        s = self.settings
        if self.in_flight >= s.max_concurrent:
            self.metrics.requests.labels(method, "RESOURCE_EXHAUSTED").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"server busy: {self.in_flight} calls in progress (max_concurrent="
                f"{s.max_concurrent}); retry with backoff",
            )
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        t0 = time.perf_counter()
        code, message = grpc.StatusCode.OK, ""
        deadline = float("inf")
        try:
            limit = budget if budget is not None else s.deadline_ms / 1e3
            remaining = context.time_remaining()
            if remaining is not None:
                limit = min(limit, remaining)
            deadline = time.monotonic() + limit

            async def run() -> T:
                if self.hook is not None:
                    await self.hook(method)
                return await work(deadline)

            return await asyncio.wait_for(run(), limit)
        except RequestError as e:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(e)
        except (TimeoutError, DeadlineExpired):
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            message = f"deadline exceeded ({method}; server budget {s.deadline_ms} ms)"
        except (NotReady, FeatureStoreError) as e:  # e.g. Redis or a feature server down
            code, message = grpc.StatusCode.UNAVAILABLE, str(e)
        except ReloadRefused as e:
            code, message = grpc.StatusCode.FAILED_PRECONDITION, str(e)
        except UpstreamError as e:
            code, message = e.code, str(e)
        except asyncio.CancelledError:
            # gRPC cancels the handler itself when the client's deadline passes, which can
            # come just before our own wait_for timeout: that is still an expired call
            expired = time.monotonic() >= deadline - DEADLINE_SLACK_S
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        except Exception as e:  # a bug must fail its call, never the server
            log.exception("%s failed", method)
            code = grpc.StatusCode.INTERNAL
            message = f"internal error ({type(e).__name__}); see the server log"
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)
            self.metrics.requests.labels(method, code.name).inc()
            self.metrics.latency.labels(method).observe(time.perf_counter() - t0)
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")


# -------------------------------------------------------------------------- services


def _items(ids: list[str], scores: np.ndarray) -> list[common_pb2.ScoredItem]:
    return [
        common_pb2.ScoredItem(item_id=i, score=float(v)) for i, v in zip(ids, scores, strict=True)
    ]


class RecommenderService(recommender_pb2_grpc.RecommenderServicer):
    def __init__(self, app: ServingApp) -> None:
        self.app = app

    async def Recommend(
        self, request: recommender_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.RecommendResponse:
        return await self.app.call("Recommend", context, lambda d: self._recommend(request, d))

    async def _recommend(
        self, request: recommender_pb2.RecommendRequest, deadline: float
    ) -> recommender_pb2.RecommendResponse:
        t0 = time.perf_counter()
        s = self.app.settings
        if not request.user_id:
            raise RequestError("user_id", "must not be empty")
        check_k("k", request.k, s.max_k)
        check_k("candidate_count", request.candidate_count, s.max_candidates, allow_zero=True)
        k = request.k
        candidates = max(request.candidate_count or s.candidate_count, k)
        exclude = set(request.exclude_item_ids)
        model = self.app.current()  # pinned: a reload mid-request does not mix bundles
        recall, ranking = self.app.stages(model)
        context = dict(request.context)
        ranked: Ranked | None = None
        if isinstance(recall, LocalRecall) and isinstance(ranking, LocalRanking):
            assert self.app.runtime is not None
            recalled, ranked = await local_recommend(
                self.app.runtime, model, request.user_id, candidates, exclude, context, deadline
            )
        else:
            recalled = await recall.search(request.user_id, candidates, exclude, deadline)
            if recalled.user_found and recalled.item_ids:
                ranked = await ranking.rank(request.user_id, recalled.item_ids, context, deadline)
        timings = common_pb2.StageTimings(
            features_ms=recalled.features_ms, recall_ms=recalled.recall_ms
        )
        if not recalled.user_found:
            ids, scores = model.fallback(k, exclude)
            fallback = True
        else:
            fallback = False
            ids, scores = [], np.zeros(0, np.float32)
            if ranked is not None:
                final = model.blend.scores(recalled.scores, ranked.scores)
                order = np.argsort(-final, kind="stable")[:k]
                ids = [recalled.item_ids[i] for i in order]
                scores = final[order]
                timings.features_ms += ranked.features_ms
                timings.rank_ms = ranked.rank_ms
        timings.total_ms = (time.perf_counter() - t0) * 1e3
        self.app.metrics.stage("total", timings.total_ms)
        return recommender_pb2.RecommendResponse(
            items=_items(ids, scores),
            model_version=model.version,
            fallback=fallback,
            timings=timings,
        )


class RecallService(recall_pb2_grpc.RecallServicer):
    def __init__(self, app: ServingApp) -> None:
        self.app = app

    async def Search(
        self, request: recall_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> recall_pb2.SearchResponse:
        return await self.app.call("Search", context, lambda d: self._search(request, d))

    async def _search(
        self, request: recall_pb2.SearchRequest, deadline: float
    ) -> recall_pb2.SearchResponse:
        check_k("k", request.k, self.app.settings.max_candidates)
        query = request.WhichOneof("query")
        model = self.app.current()
        assert self.app.runtime is not None
        local = LocalRecall(self.app.runtime, model)
        if query == "user_id":
            if not request.user_id:
                raise RequestError("user_id", "must not be empty")
            recalled = await local.search(request.user_id, request.k, set(), deadline)
        elif query == "user_vector":
            vector = np.asarray(request.user_vector.values, np.float32).reshape(1, -1)
            if not np.isfinite(vector).all():
                raise RequestError("user_vector", "holds NaN or infinite values")
            recalled = await local.search_vector(vector, request.k, deadline)
        else:
            raise RequestError("query", "set user_id or user_vector")
        return recall_pb2.SearchResponse(
            items=_items(recalled.item_ids, recalled.scores),
            model_version=model.version,
            user_found=recalled.user_found,
        )


class RankingService(ranking_pb2_grpc.RankingServicer):
    def __init__(self, app: ServingApp) -> None:
        self.app = app

    async def Rank(
        self, request: ranking_pb2.RankRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.RankResponse:
        return await self.app.call("Rank", context, lambda d: self._rank(request, d))

    async def _rank(
        self, request: ranking_pb2.RankRequest, deadline: float
    ) -> ranking_pb2.RankResponse:
        if not request.user_id:
            raise RequestError("user_id", "must not be empty")
        if not request.item_ids:
            raise RequestError("item_ids", "must not be empty")
        limit = self.app.settings.max_candidates
        if len(request.item_ids) > limit:
            raise RequestError("item_ids", f"{len(request.item_ids)} items; at most {limit}")
        model = self.app.current()
        items = list(request.item_ids)
        model.check_items(items)
        assert self.app.runtime is not None
        ranked = await LocalRanking(self.app.runtime, model).rank(
            request.user_id, items, dict(request.context), deadline
        )
        return ranking_pb2.RankResponse(scores=ranked.scores.tolist(), model_version=model.version)


def _feature_value(kind: str, value: Any) -> common_pb2.FeatureValue:
    if kind == "list":
        return common_pb2.FeatureValue(int64_list=common_pb2.Int64List(values=value.tolist()))
    if kind == "int64":
        return common_pb2.FeatureValue(int64_value=int(value))
    return common_pb2.FeatureValue(float_value=float(value))


class FeatureService(feature_pb2_grpc.FeatureServicer):
    def __init__(self, app: ServingApp) -> None:
        self.app = app

    async def GetUserFeatures(
        self, request: feature_pb2.FeaturesRequest, context: grpc.aio.ServicerContext
    ) -> feature_pb2.FeaturesResponse:
        return await self.app.call("GetUserFeatures", context, lambda d: self._get("user", request))

    async def GetItemFeatures(
        self, request: feature_pb2.FeaturesRequest, context: grpc.aio.ServicerContext
    ) -> feature_pb2.FeaturesResponse:
        return await self.app.call("GetItemFeatures", context, lambda d: self._get("item", request))

    async def _get(self, entity: str, request: feature_pb2.FeaturesRequest) -> Any:
        if not request.ids:
            raise RequestError("ids", "must not be empty")
        limit = self.app.settings.max_candidates
        if len(request.ids) > limit:
            raise RequestError("ids", f"{len(request.ids)} ids; at most {limit}")
        snapshot = request.snapshot or "ranker"
        if snapshot not in SNAPSHOTS:
            raise RequestError("snapshot", f"{snapshot!r} is not one of {SNAPSHOTS}")
        model = self.app.current()
        assert self.app.runtime is not None
        t0 = time.perf_counter()
        layout, records, found, names = await self.app.runtime.run(
            model.feature_rows, snapshot, entity, list(request.ids), list(request.names)
        )
        self.app.metrics.stage("features", (time.perf_counter() - t0) * 1e3)
        kinds = {c.name: c.kind for c in layout.columns}
        rows = [
            feature_pb2.FeatureRow(
                id=raw,
                found=bool(ok),
                values={n: _feature_value(kinds[n], record[n]) for n in names},
            )
            for raw, ok, record in zip(request.ids, found, records, strict=True)
        ]
        return feature_pb2.FeaturesResponse(rows=rows, model_version=model.version)


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, app: ServingApp) -> None:
        self.app = app

    async def Reload(
        self, request: admin_pb2.ReloadRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ReloadResponse:
        async def work(deadline: float) -> admin_pb2.ReloadResponse:
            t0 = time.perf_counter()
            path = request.bundle or str(self.app.current().path)
            model, previous = await self.app.reload(path)
            return admin_pb2.ReloadResponse(
                model_version=model.version,
                previous_version=previous,
                load_seconds=time.perf_counter() - t0,
            )

        return await self.app.call("Reload", context, work, budget=RELOAD_BUDGET_S)

    async def Status(
        self, request: admin_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.StatusResponse:
        async def work(deadline: float) -> admin_pb2.StatusResponse:
            model = self.app.current()
            return admin_pb2.StatusResponse(
                model_version=model.version,
                bundle=str(model.path),
                items=model.items,
                users=model.users,
                feature_store=model.store.kind,
                in_flight=self.app.in_flight,
                services=list(self.app.settings.services),
            )

        return await self.app.call("Status", context, work)


# ----------------------------------------------------------------- background server


class ServerHandle:
    """A full server in a background thread with its own event loop (see start_background)."""

    def __init__(self, settings: ServeConfig) -> None:
        self.settings = settings
        self.app = ServingApp(settings)
        self.port = 0
        self.metrics_port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._grace = settings.grace_seconds
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="recsys-server", daemon=True)

    @property
    def target(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            ports = await self.app.start()
            self.port = ports[self.settings.services[0]]
            self.metrics_port = self.app.metrics_port
            await self.app.load()
        except BaseException as e:
            self._error = e
            await self.app.stop(0)
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self.app.stop(self._grace)

    def start(self) -> ServerHandle:
        self._thread.start()
        try:
            self._ready.wait()
        except BaseException:  # Ctrl-C while the bundle loads: stop, then re-raise
            self.stop(0)
            raise
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def stop(self, grace: float = 2.0) -> None:
        """Drain calls in progress (up to `grace` s), then free the ports and threads."""
        self._grace = grace
        loop, stop = self._loop, self._stop
        if self._thread.is_alive() and loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_background(cfg: DictConfig | Mapping[str, Any] | ServeConfig) -> ServerHandle:
    """Start the full server (every service in-process, bundle loaded and warmed) on a free
    loopback port in a background thread; returns once it answers SERVING.

    `cfg` is a serve config or a mapping of its keys (at least `bundle`). The gRPC port is
    always a free one (`handle.port`); metrics, when on, too (`handle.metrics_port`).
    """
    settings = settings_from(cfg)
    settings.port = 0
    settings.ports = {}
    settings.services = list(SERVICES)
    settings.remote = ServeRemoteConfig()
    if settings.metrics_port is not None:
        settings.metrics_port = 0
    return ServerHandle(settings).start()


# ------------------------------------------------------------------------ entry point


async def serve(settings: ServeConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain and return."""
    app = ServingApp(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        if app.metrics_port is not None:
            log.info("metrics on http://%s:%d/metrics", settings.host, app.metrics_port)
        loading = asyncio.ensure_future(app.load())
        waiting = asyncio.ensure_future(stop.wait())
        await asyncio.wait({loading, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            model = loading.result()  # a bundle that fails to load raises here
            ports = sorted(set(app.ports.values()))
            print(f"ready: {model.version} on {settings.host}:{ports}", flush=True)
            await waiting
        else:
            loading.cancel()
        log.info("stopping: draining calls in progress (up to %.1f s)", settings.grace_seconds)
    finally:
        await app.stop()
    print("stopped", flush=True)


def serve_from_config(cfg: DictConfig) -> None:
    asyncio.run(serve(settings_from(cfg)))


def check_serve(cfg: DictConfig) -> None:
    settings = settings_from(cfg)
    if not Path(settings.bundle).is_dir():
        raise ServeConfigError(f"bundle={settings.bundle} is not a directory")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="serve")
def main(cfg: DictConfig) -> None:
    run_task(serve_from_config, cfg, check=check_serve)


if __name__ == "__main__":
    main()
