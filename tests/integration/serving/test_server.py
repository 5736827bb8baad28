"""The full server on a free loopback port over a small bundle: one server for the module."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from recsys.export.blend import Blend
from recsys.export.reader import load_bundle
from serving import client as client_cli
from serving.client import RecommenderClient
from serving.errors import ServeConfigError
from serving.proto.recsys.v1 import (
    feature_pb2,
    feature_pb2_grpc,
    ranking_pb2,
    ranking_pb2_grpc,
    recall_pb2,
    recall_pb2_grpc,
    recommender_pb2,
    recommender_pb2_grpc,
)
from serving.server import ServerHandle, ServingApp, settings_from, start_background

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # torch.jit notices
]
MAX_K = 50


@pytest.fixture(scope="module")
def server(serving_bundle: Path) -> Iterator[ServerHandle]:
    with start_background({"bundle": str(serving_bundle), "max_k": MAX_K}) as handle:
        yield handle


@pytest.fixture(scope="module")
def channel(server: ServerHandle) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as ch:
        yield ch


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> Iterator[RecommenderClient]:
    with RecommenderClient(server.target) as c:
        yield c


@pytest.fixture(scope="module")
def bundle(serving_bundle: Path):
    return load_bundle(serving_bundle)


def known_users(bundle, n: int = 3) -> list[str]:
    return bundle.retrieval_features.users["user_raw"].to_pylist()[:n]


def test_known_user_gets_k_distinct_items_by_descending_score_none_excluded(
    client: RecommenderClient, bundle
) -> None:
    user = known_users(bundle)[0]
    first = client.recommend(user, k=10, context={"device": "phone"})
    assert not first.fallback
    assert len(first.items) == 10 == len(set(first.items))
    assert all(a >= b for a, b in zip(first.scores, first.scores[1:], strict=False))
    exclude = first.items[:3]
    second = client.recommend(user, k=10, context={"device": "phone"}, exclude=exclude)
    assert len(second.items) == 10 == len(set(second.items))
    assert not set(exclude) & set(second.items)
    assert second.items[:7] == first.items[3:]  # the rest keeps its order
    catalogue = set(bundle.item_ids["raw_id"].to_pylist())
    assert set(second.items) <= catalogue
    assert first.model_version.startswith(bundle.path.name + "-")


def test_rank_scores_equal_the_bundles_ranker_on_offline_rows(
    channel: grpc.Channel, bundle
) -> None:
    """Training-serving skew check: the served scores are the exported ranker's on the rows
    the snapshot and the pipeline's online transform give (context included)."""
    user = known_users(bundle)[1]
    items = bundle.item_ids["raw_id"].to_pylist()[:25]
    reply = ranking_pb2_grpc.RankingStub(channel).Rank(
        ranking_pb2.RankRequest(user_id=user, item_ids=items, context={"device": "web"})
    )
    snap = bundle.ranker_features
    users, _ = snap.rows("user", [user] * len(items))
    rows, _ = snap.rows("item", items)
    raw = dict.fromkeys(snap.pipeline.raw_columns)  # the request carries only the context
    context = snap.pipeline.transform_batch([{**raw, "device": "web", "user_id": user}])
    columns = {}
    for name in bundle.ranker_inputs:
        entity = snap.spec[name].entity
        source = users if entity == "user" else rows if entity == "item" else None
        if source is not None:
            columns[name] = source[name]
        else:
            columns[name] = pa.array(context[name].to_pylist() * len(items))
    with torch.no_grad():
        expected = bundle.ranker(bundle.ranker_batch(pa.table(columns))).numpy()
    assert context["device"][0].as_py() >= 2  # a known device, not the missing index
    np.testing.assert_allclose(np.asarray(reply.scores), expected, atol=1e-5)
    # the context feature matters: another device gives other scores
    other = ranking_pb2_grpc.RankingStub(channel).Rank(
        ranking_pb2.RankRequest(user_id=user, item_ids=items, context={"device": "tablet"})
    )
    assert not np.allclose(other.scores, reply.scores)


def test_unknown_user_gets_the_popularity_list_flagged(client: RecommenderClient, bundle) -> None:
    popular = [i for i in bundle.popularity["raw_id"].to_pylist() if i is not None]
    result = client.recommend("nobody-knows-me", k=5, exclude=[popular[1]])
    assert result.fallback
    assert result.items == [popular[0], *popular[2:6]]


def _abort(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=5)
    return info.value


INVALID = [
    ("Recommend", recommender_pb2.RecommendRequest(user_id="", k=5), "user_id"),
    ("Recommend", recommender_pb2.RecommendRequest(user_id="u1", k=0), "k"),
    ("Recommend", recommender_pb2.RecommendRequest(user_id="u1", k=-3), "k"),
    ("Recommend", recommender_pb2.RecommendRequest(user_id="u1", k=MAX_K + 1), "k"),
    (
        "Recommend",
        recommender_pb2.RecommendRequest(user_id="u1", k=5, candidate_count=-1),
        "candidate_count",
    ),
    (
        "Recommend",
        recommender_pb2.RecommendRequest(user_id="u1", k=5, candidate_count=10**6),
        "candidate_count",
    ),
    (
        "Recommend",
        recommender_pb2.RecommendRequest(user_id="u1", k=5, context={"no_such": "x"}),
        "context['no_such']",
    ),
    ("Rank", ranking_pb2.RankRequest(user_id="u1", item_ids=["i1", "zz-unknown"]), "item_ids"),
    ("Rank", ranking_pb2.RankRequest(user_id="u1"), "item_ids"),
    ("Rank", ranking_pb2.RankRequest(user_id="", item_ids=["i1"]), "user_id"),
    ("Search", recall_pb2.SearchRequest(k=5), "query"),
    ("Search", recall_pb2.SearchRequest(user_id="u1", k=0), "k"),
    (
        "Search",
        recall_pb2.SearchRequest(user_vector={"values": [0.1, 0.2]}, k=5),
        "user_vector",
    ),
    ("GetUserFeatures", feature_pb2.FeaturesRequest(), "ids"),
    ("GetUserFeatures", feature_pb2.FeaturesRequest(ids=["u1"], snapshot="x"), "snapshot"),
    ("GetItemFeatures", feature_pb2.FeaturesRequest(ids=["i1"], names=["nope"]), "names"),
]


@pytest.mark.parametrize(("method", "request_", "field"), INVALID)
def test_invalid_arguments_name_the_field(
    channel: grpc.Channel, client: RecommenderClient, bundle, method: str, request_, field: str
) -> None:
    stubs = {
        "Recommend": recommender_pb2_grpc.RecommenderStub(channel).Recommend,
        "Rank": ranking_pb2_grpc.RankingStub(channel).Rank,
        "Search": recall_pb2_grpc.RecallStub(channel).Search,
        "GetUserFeatures": feature_pb2_grpc.FeatureStub(channel).GetUserFeatures,
        "GetItemFeatures": feature_pb2_grpc.FeatureStub(channel).GetItemFeatures,
    }
    error = _abort(stubs[method], request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(f"{field}:"), error.details()
    # and the server goes on answering
    assert len(client.recommend(known_users(bundle)[0], k=3).items) == 3


def test_health_serving_and_reflection_lists_the_services(channel: grpc.Channel) -> None:
    checker = health_pb2_grpc.HealthStub(channel)
    for service in ("", "recsys.v1.Recommender", "recsys.v1.Ranking", "recsys.v1.Feature"):
        reply = checker.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {
        "recsys.v1.Recommender",
        "recsys.v1.Recall",
        "recsys.v1.Ranking",
        "recsys.v1.Feature",
        "recsys.v1.Admin",
        "grpc.health.v1.Health",
    } <= names
    # a tool can fetch the schema by symbol, with no .proto at hand
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="recsys.v1.Ranking")]),
        timeout=5,
    )
    files = [r.file_descriptor_response.file_descriptor_proto for r in replies]
    assert files and files[0]


def test_health_is_not_serving_until_the_bundle_is_loaded(serving_bundle: Path) -> None:
    async def scenario() -> list[int]:
        settings = settings_from({"bundle": str(serving_bundle), "port": 0, "metrics_port": None})
        app = ServingApp(settings)
        await app.start()
        target = f"127.0.0.1:{app.ports['recommender']}"
        statuses = []
        try:
            async with grpc.aio.insecure_channel(target) as ch:
                checker = health_pb2_grpc.HealthStub(ch)
                request = health_pb2.HealthCheckRequest(service="recsys.v1.Recommender")
                statuses.append((await checker.Check(request)).status)
                stub = recommender_pb2_grpc.RecommenderStub(ch)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Recommend(recommender_pb2.RecommendRequest(user_id="u1", k=3))
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                await app.load()
                statuses.append((await checker.Check(request)).status)
                reply = await stub.Recommend(recommender_pb2.RecommendRequest(user_id="u1", k=3))
                assert len(reply.items) == 3
        finally:
            await app.stop(0)
        return statuses

    statuses = asyncio.run(scenario())
    r = health_pb2.HealthCheckResponse
    assert statuses == [r.NOT_SERVING, r.SERVING]


def test_feature_service_returns_the_snapshot_values(channel: grpc.Channel, bundle) -> None:
    stub = feature_pb2_grpc.FeatureStub(channel)
    items = bundle.ranker_features.items
    ids = items["item_raw"].to_pylist()[:3]
    reply = stub.GetItemFeatures(feature_pb2.FeaturesRequest(ids=[*ids, "missing-item"]))
    assert [r.found for r in reply.rows] == [True, True, True, False]
    for row, i in zip(reply.rows, range(3), strict=False):
        assert row.id == ids[i]
        assert row.values["category"].int64_value == items["category"][i].as_py()
        tags = items["tags"][i].as_py()
        assert list(row.values["tags"].int64_list.values) == tags + [0] * (3 - len(tags))
    assert reply.rows[3].values["category"].int64_value == 0
    users = bundle.retrieval_features.users
    reply = stub.GetUserFeatures(
        feature_pb2.FeaturesRequest(ids=users["user_raw"].to_pylist()[:2], snapshot="retrieval")
    )
    got = [r.values["activity"].float_value for r in reply.rows]
    np.testing.assert_array_equal(np.float32(got), users["activity"].to_numpy()[:2])


def test_recall_by_user_id_equals_recall_by_that_users_vector(
    channel: grpc.Channel, bundle
) -> None:
    stub = recall_pb2_grpc.RecallStub(channel)
    user = known_users(bundle)[2]
    by_id = stub.Search(recall_pb2.SearchRequest(user_id=user, k=20))
    rows, _ = bundle.retrieval_features.rows("user", [user])
    vector = bundle.user_vectors(rows)[0].tolist()
    by_vector = stub.Search(recall_pb2.SearchRequest(user_vector={"values": vector}, k=20))
    assert by_id.user_found and len(by_id.items) == 20
    assert [i.item_id for i in by_id.items] == [i.item_id for i in by_vector.items]
    unknown = stub.Search(recall_pb2.SearchRequest(user_id="stranger", k=5))
    assert not unknown.user_found and not unknown.items


def test_metrics_count_requests_by_method_and_code(
    server: ServerHandle, client: RecommenderClient, bundle
) -> None:
    client.recommend(known_users(bundle)[0], k=4)
    with pytest.raises(grpc.RpcError):
        client.recommend("", k=4)
    assert server.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read()
    text = text.decode()
    assert 'recsys_requests_total{code="OK",method="Recommend"}' in text
    assert 'recsys_requests_total{code="INVALID_ARGUMENT",method="Recommend"}' in text
    for stage in ("features", "recall", "rank", "total"):
        assert f'recsys_stage_seconds_count{{stage="{stage}"}}' in text
    assert "recsys_in_flight_requests" in text
    assert f'version="{client.recommend("x", k=1).model_version}"' in text


def test_split_deployment_gives_the_same_answers(
    serving_bundle: Path, server: ServerHandle, client: RecommenderClient, bundle
) -> None:
    """Three tiers: the module's server as the feature server; recall and ranking in a second
    server reading features from it over gRPC; the recommender in a third calling those."""
    common = {"bundle": str(serving_bundle), "metrics_port": None, "port": 0}
    stage_settings = {
        **common,
        "services": ["recall", "ranking"],
        "remote": {"feature": server.target},
    }
    stages = ServerHandle(settings_from(stage_settings)).start()
    assert stages.app.current().store.kind == "grpc"
    try:
        remote = f"127.0.0.1:{stages.port}"
        front_settings = settings_from(
            {**common, "services": ["recommender"], "remote": {"recall": remote, "ranking": remote}}
        )
        with ServerHandle(front_settings).start() as front, RecommenderClient(front.target) as c:
            for user in known_users(bundle):
                split = c.recommend(user, k=8, context={"device": "web"}, exclude=["i1"])
                local = client.recommend(user, k=8, context={"device": "web"}, exclude=["i1"])
                assert split.items == local.items
                np.testing.assert_allclose(split.scores, local.scores, atol=1e-5)
            assert c.recommend("stranger", k=3).fallback
            with pytest.raises(grpc.RpcError) as info:
                c.recommend(known_users(bundle)[0], k=3, context={"bad": "1"})
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        stages.stop()


def _new_thread_torch_threads() -> int:
    """The intra-op thread count a thread started now gets (torch's process-wide setting)."""
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_start_background_leaves_no_thread_or_socket(serving_bundle: Path) -> None:
    before = set(threading.enumerate())
    torch_threads = _new_thread_torch_threads()
    handle = start_background({"bundle": str(serving_bundle), "torch_threads": 1})
    port, metrics_port = handle.port, handle.metrics_port
    with RecommenderClient(handle.target) as c:
        assert c.health() == "SERVING"
    handle.stop()
    assert set(threading.enumerate()) <= before
    assert _new_thread_torch_threads() == torch_threads  # the caller's setting is given back
    for p in (port, metrics_port):
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))  # free again


def test_client_command_prints_json(server: ServerHandle, bundle, capsys) -> None:
    user = known_users(bundle)[0]
    code = client_cli.main(
        [
            "--target",
            server.target,
            "recommend",
            "--user",
            user,
            "--k",
            "3",
            "--context",
            "device=phone",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["items"]) == 3 and out["fallback"] is False
    code = client_cli.main(["recommend", "--target", server.target, "--user", user, "--k", "2"])
    assert code == 0
    table = capsys.readouterr().out
    assert "model " in table and "2 items in" in table
    assert client_cli.main(["--target", server.target, "--health"]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert client_cli.main(["--target", server.target, "recommend", "--user", "", "--k", "3"]) == 1
    assert "INVALID_ARGUMENT: user_id" in capsys.readouterr().err


def test_a_message_over_the_size_bound_is_refused(client: RecommenderClient, bundle) -> None:
    huge = ["x" * 1000] * 5000  # ~5 MB > max_message_bytes (4 MiB)
    with pytest.raises(grpc.RpcError) as info:
        client.recommend(known_users(bundle)[0], k=3, exclude=huge)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(client.recommend(known_users(bundle)[0], k=3).items) == 3


def test_a_port_in_use_fails_naming_the_address(serving_bundle: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = set(threading.enumerate())
        settings = settings_from({"bundle": str(serving_bundle), "port": port})
        with pytest.raises(ServeConfigError, match=f"127.0.0.1:{port}"):
            ServerHandle(settings).start()
        assert set(threading.enumerate()) <= before


def test_odd_requests_never_fail_inside_the_server(
    channel: grpc.Channel, client: RecommenderClient, bundle
) -> None:
    raw = channel.unary_unary("/recsys.v1.Recommender/Recommend")  # bytes in, bytes out
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\x00 not a protobuf \x12\x80", timeout=5)
    # grpc.aio itself answers a body that does not parse (UNKNOWN, "Error parsing message")
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert "Error parsing message" in info.value.details()
    user = known_users(bundle)[0]
    everything = bundle.item_ids["raw_id"].to_pylist()
    odd = [
        dict(user_id="ü" * 10_000, k=5),  # unknown, long, unicode: the fallback answers
        dict(user_id=user, k=MAX_K, candidate_count=1),  # candidates raised to k
        dict(user_id=user, k=5, exclude=everything),  # nothing left to recommend
        dict(user_id=user, k=5, context={"device": ""}),  # empty value: missing encoding
        dict(user_id=user, k=5, context={"device": "\x00"}),  # unseen value: unknown index
    ]
    answers = [client.recommend(**request) for request in odd]
    assert answers[0].fallback and len(answers[0].items) == 5
    assert len(answers[1].items) == MAX_K
    assert answers[2].items == [] and not answers[2].fallback
    assert len(answers[3].items) == len(answers[4].items) == 5
    assert len(client.recommend(user, k=3).items) == 3


def test_user_vector_table_holds_what_the_tower_computes_per_request(serving_bundle: Path) -> None:
    from serving.model import ServingModel

    def load(**keys: object) -> ServingModel:
        return ServingModel.load(serving_bundle, settings_from({"warmup_requests": 0, **keys}))

    table, per_request, too_small = load(), load(user_vector_table_mb=0), None
    too_small = load(user_vector_table_mb=0.001)  # 240 users x D floats do not fit in 1 KiB
    try:
        assert table.user_vectors is not None
        assert per_request.user_vectors is None and too_small.user_vectors is None
        users = table.bundle.retrieval_features.users["user_raw"].to_pylist()
        assert len(table.user_vector_rows) == len(users) == table.users
        for user in users:
            looked_up, _ = table.user_vector(user)
            computed, _ = per_request.user_vector(user)
            assert looked_up is not None and computed is not None, user
            np.testing.assert_allclose(looked_up, computed, rtol=1e-5, atol=1e-6, err_msg=user)
        assert table.user_vector("stranger")[0] is None
        user = users[0]
        assert table.recall(user, None, 20, set()).item_ids == (
            per_request.recall(user, None, 20, set()).item_ids
        )
        table.user_vectors[table.user_vector_rows[user]] = 7.0  # the lookup reads the table
        assert (table.user_vector(user)[0] == 7.0).all()
    finally:
        for model in (table, per_request, too_small):
            model.close()


def test_recommend_orders_by_the_bundles_blend_of_recall_and_ranker_scores(
    serving_bundle: Path, tmp_path: Path
) -> None:
    """The blend stored in the manifest is the one serving applies: Recommend's order and
    scores equal Blend.scores of the Recall scores and the Ranking logits of the same items."""
    blended = tmp_path / "bundle"
    shutil.copytree(serving_bundle, blended)
    manifest = json.loads((blended / "manifest.json").read_text())
    rule = Blend(weight=0.4, retrieval_mean=0.1, retrieval_std=0.2, ranker_mean=-0.3, ranker_std=2)
    manifest["blend"] = {**dataclasses.asdict(rule), "chosen_on": "test"}
    (blended / "manifest.json").write_text(json.dumps(manifest))
    user = load_bundle(blended).retrieval_features.users["user_raw"].to_pylist()[0]
    with start_background({"bundle": str(blended), "candidate_count": 40}) as handle:
        with grpc.insecure_channel(handle.target) as ch:
            recalled = recall_pb2_grpc.RecallStub(ch).Search(
                recall_pb2.SearchRequest(user_id=user, k=40)
            )
            items = [i.item_id for i in recalled.items]
            ranked = ranking_pb2_grpc.RankingStub(ch).Rank(
                ranking_pb2.RankRequest(user_id=user, item_ids=items)
            )
        with RecommenderClient(handle.target) as client:
            served = client.recommend(user, k=10)
    expected = rule.scores(np.float32([i.score for i in recalled.items]), np.float32(ranked.scores))
    order = np.argsort(-expected, kind="stable")[:10]
    assert served.items == [items[i] for i in order]
    np.testing.assert_allclose(served.scores, expected[order], rtol=1e-5)
    # the two stages disagree here, so the order above is the blend's, not one stage's
    by_rank = [items[i] for i in np.argsort(-np.float32(ranked.scores), kind="stable")[:10]]
    assert by_rank != items[:10]
