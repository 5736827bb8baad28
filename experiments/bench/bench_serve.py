"""Recommend under load: throughput and latency at concurrency 1, 8 and 32, against the compute
floor of one request.

    python experiments/bench/bench_serve.py [--items 100000] [--seconds 8] [--index hnsw]
        [--server KEY=VALUE ...]    # serve settings, e.g. the old ranker design:
        # --server ranker_threads=1 --server torch_threads=2 --server max_rank_batch=8192

What runs: a bundle of `--items` items (tests/helpers/serving_bundle.py: synthetic clusters,
a randomly initialised W&D ranker at the default sizes, hidden [1024, 1024], and a two-tower
retrieval model at its defaults, exported through recsys.export; built once into `--work` and
reused), served by `python -m serving.server` in its own process on a free loopback port; this
process is the client (grpc.aio, `c` requests in flight at a time, known users drawn at
random, 200 candidates, k = 10) for `--seconds` per level after a warm-up.

Figures, one JSON line each:
- `floor`: the ranker's forward FLOPs for 200 candidates (its Linear layers: 2 x in x out per
  row) divided by the fp32 matmul rate measured here at those shapes with batch 200 on the
  server's thread count; `ceiling_rps` = that rate / the FLOPs of one request (what the two
  cores could do if the ranker's arithmetic were all there is).
  The rate is measured five times (before, between and after the levels, the server idle);
  the floor uses the best repeat of all (strict), `floor_ms_at_median_rate` the median.
- `recommend` at each concurrency: requests/s, p50/p95/p99 ms (client side), errors, the
  mean server-side stage times (features, recall, rank, total) the replies carry, and the CPU
  time per request of the server process and of this client process (over the whole level).
- `grpc_call`: 1,000 sequential Health.Check calls to the same server: the latency and CPU a
  call costs in gRPC alone, before any recommendation work.
- `targets`: c=1 p50 <= floor + 3 ms; c=32 throughput >= 70% of the ceiling with zero errors;
  c=8 p99 < 4 x c=1 p50.
Each line carries the 1-minute load average: the machine is shared, figures taken under load
are upper bounds for latency and lower bounds for throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from recsys.export.index import IndexSettings  # noqa: E402
from recsys.export.reader import load_bundle  # noqa: E402
from recsys.export.writer import load_run  # noqa: E402

CANDIDATES, K = 200, 10


def emit(**figure: Any) -> None:
    print(
        json.dumps({"bench": "serve", **figure, "load1": round(os.getloadavg()[0], 2)}), flush=True
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build(work: Path, items: int, index: str) -> Path:
    from tests.helpers.serving_bundle import build_bundle

    params = {"items": items, "index": index, "users": 20_000, "rows": 3 * items, "version": 2}
    bundle = work / "bundle"
    stamp = work / "params.json"
    if bundle.is_dir() and stamp.is_file() and json.loads(stamp.read_text()) == params:
        return bundle
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    settings = IndexSettings(type=index, recall_users=200)
    if index == "hnsw":
        # a lighter graph than the export default (M 32; efConstruction was 200 when this was
        # written, ~3 min here; now 64); efSearch 256 as the default
        settings = IndexSettings(type="hnsw", hnsw_m=16, ef_construction=80, recall_users=200)
    t0 = time.perf_counter()
    build_bundle(
        bundle,
        users=params["users"],
        items=items,
        rows=params["rows"],
        index=settings,
        # the default sizes of conf/model (the test helper's config starts from small ones)
        ranker_overrides=("model.hidden_units=[1024,1024]",),
        tower_overrides=("model.tower_units=[1024,512,128]",),
        work=work / "work",
    )
    emit(figure="bundle_build_seconds", value=round(time.perf_counter() - t0, 1), items=items)
    stamp.write_text(json.dumps(params))
    return bundle


def linear_shapes(work: Path) -> list[tuple[int, int]]:
    ranker = load_run(work / "work" / "wide_deep", "ranker").model
    return [
        (m.in_features, m.out_features) for m in ranker.modules() if isinstance(m, torch.nn.Linear)
    ]


def matmul_rate(
    shapes: list[tuple[int, int]], batch: int, seconds: float = 1.5
) -> tuple[float, float]:
    """FLOP/s of the chain batch x in @ in x out over the ranker's shapes, from the best and
    from the median chain time over `seconds` of repeats. The machine is shared: the best
    repeat is the one that ran without interference (the strict floor), the median what a
    typical request meets."""
    mats = [(torch.randn(batch, i), torch.randn(i, o)) for i, o in shapes]
    flops = sum(2 * batch * i * o for i, o in shapes)
    for a, b in mats:
        torch.mm(a, b)
    times: list[float] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        for a, b in mats:
            torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return flops / min(times), flops / float(np.median(times))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_now(server_pid: int) -> tuple[float, float]:
    """CPU seconds used so far by the server process and by this (client) process."""
    return process_cpu_seconds(server_pid), own_cpu_seconds()


def cpu_ms_per_call(server_pid: int, since: tuple[float, float], calls: int) -> dict[str, float]:
    """Server and client CPU ms per call since `since` (a `cpu_now` reading)."""
    now = cpu_now(server_pid)
    calls = max(1, calls)
    return {
        side: round((now[i] - since[i]) / calls * 1e3, 3)
        for i, side in enumerate(("server", "client"))
    }


def ranker_forward_ms(bundle: Path, rows: int, seconds: float = 1.5) -> float:
    """Best time of the exported ranker itself on `rows` processed rows (this process)."""
    from recsys.export.tensors import read_table

    loaded = load_bundle(bundle, verify=False)
    data = Path(loaded.manifest["runs"]["ranker"]["data"])
    table = read_table(data / "test").slice(0, rows)
    batch = loaded.ranker_batch(table)
    best, stop = float("inf"), time.perf_counter() + seconds
    with torch.inference_mode():
        for _ in range(3):
            loaded.ranker(batch)
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            loaded.ranker(batch)
            best = min(best, time.perf_counter() - t0)
    return best * 1e3


def start_server(
    bundle: Path,
    port: int,
    threads: int,
    workers: int,
    run_dir: Path,
    overrides: Sequence[str] = (),
) -> subprocess.Popen:
    """`python -m serving.server` on the bundle; `overrides` (KEY=VALUE) replace or add to the
    benchmark's own serve settings."""
    settings = {
        "bundle": str(bundle),
        "port": str(port),
        "metrics_port": "null",
        "ranker_threads": str(threads),
        "workers": str(workers),
        "candidate_count": str(CANDIDATES),
        "max_concurrent": "256",
        "deadline_ms": "30000",
        "hydra.run.dir": str(run_dir),
    }
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise SystemExit(f"--server {override!r}: expected KEY=VALUE")
        settings[key] = value
    command = [sys.executable, "-m", "serving.server", *(f"{k}={v}" for k, v in settings.items())]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("ready: "):
            return process
    raise RuntimeError(f"server exited with {process.wait()} before it was ready")


async def run_level(
    target: str, users: list[str], concurrency: int, seconds: float, warmup: float
) -> dict[str, Any]:
    import grpc

    from serving.proto.recsys.v1 import recommender_pb2, recommender_pb2_grpc

    latencies: list[float] = []
    completed = 0
    stages: list[tuple[float, float, float, float]] = []
    errors: dict[str, int] = {}
    rng = random.Random(concurrency)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        start = time.perf_counter()
        measure_from = start + warmup
        end = measure_from + seconds

        async def worker() -> None:
            nonlocal completed
            while True:
                t0 = time.perf_counter()
                if t0 >= end:
                    return
                request = recommender_pb2.RecommendRequest(
                    user_id=rng.choice(users), k=K, candidate_count=CANDIDATES
                )
                try:
                    reply = await stub.Recommend(request, timeout=30)
                    ok = len(reply.items) == K
                except grpc.aio.AioRpcError as e:
                    ok, reply = False, None
                    if t0 >= measure_from:
                        errors[e.code().name] = errors.get(e.code().name, 0) + 1
                t1 = time.perf_counter()
                completed += 1
                if t0 >= measure_from and t1 <= end and ok and reply is not None:
                    latencies.append((t1 - t0) * 1e3)
                    t = reply.timings
                    stages.append((t.features_ms, t.recall_ms, t.rank_ms, t.total_ms))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    lat = np.asarray(latencies)
    s = np.asarray(stages).mean(axis=0) if stages else np.zeros(4)
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "completed_with_warmup": completed,
        "throughput_rps": round(len(lat) / seconds, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "errors": errors,
        "server_stage_mean_ms": {
            "features": round(float(s[0]), 2),
            "recall": round(float(s[1]), 2),
            "rank": round(float(s[2]), 2),
            "total": round(float(s[3]), 2),
        },
    }


async def health_calls(target: str, calls: int) -> list[float]:
    """Latencies (ms) of `calls` sequential Health.Check calls: what a call costs in gRPC
    alone (the same client, server process and loopback) before any recommendation work."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    out = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(calls):
            t0 = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest(service=""))
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--index", default="hnsw", choices=["flat", "hnsw", "ivfpq"])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per level")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a serve setting for the server (repeatable), e.g. --server ranker_threads=1",
    )
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "bench" / "serve")
    args = parser.parse_args()
    work = args.work / f"{args.items}-{args.index}"
    bundle = build(work, args.items, args.index)

    torch.set_num_threads(args.threads)
    shapes = linear_shapes(work)
    flops_per_row = sum(2 * i * o for i, o in shapes)
    request_flops = flops_per_row * CANDIDATES
    rates = [matmul_rate(shapes, CANDIDATES)]
    rate_large = matmul_rate(shapes, 8 * CANDIDATES)[0]
    forward_ms = ranker_forward_ms(bundle, CANDIDATES)
    manifest = load_bundle(bundle, verify=False).retrieval_features.users
    users = [str(u) for u in manifest["user_raw"].to_pylist()]
    port = free_port()
    server = start_server(
        bundle, port, args.threads, args.workers, work / "server_run", args.server
    )
    results = {}
    try:
        for c in args.concurrency:
            since = cpu_now(server.pid)
            result = asyncio.run(
                run_level(f"127.0.0.1:{port}", users, c, args.seconds, args.warmup)
            )
            result["cpu_ms_per_request"] = cpu_ms_per_call(
                server.pid, since, result["completed_with_warmup"]
            )
            results[c] = result
            rates.append(matmul_rate(shapes, CANDIDATES, seconds=1.0))  # server idle now
            emit(
                figure="recommend",
                items=args.items,
                index=args.index,
                k=K,
                candidates=CANDIDATES,
                **result,
            )
        since = cpu_now(server.pid)
        health = asyncio.run(health_calls(f"127.0.0.1:{port}", 1000))
        emit(
            figure="grpc_call",
            what="Health.Check, sequential: gRPC's own cost per call on this machine",
            p50_ms=round(float(np.percentile(health, 50)), 3),
            p99_ms=round(float(np.percentile(health, 99)), 3),
            cpu_ms_per_call=cpu_ms_per_call(server.pid, since, len(health)),
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    # the rate between and after the levels too: the best is the machine's rate in this run
    rates.append(matmul_rate(shapes, CANDIDATES))
    forward_ms = min(forward_ms, ranker_forward_ms(bundle, CANDIDATES))
    rate = max(best for best, _ in rates)
    median_rate = float(np.median([median for _, median in rates]))
    floor_ms = request_flops / rate * 1e3
    ceiling = rate / request_flops
    emit(
        figure="floor",
        items=args.items,
        index=args.index,
        candidates=CANDIDATES,
        ranker_linear_shapes=shapes,
        request_mflops=round(request_flops / 1e6, 1),
        matmul_gflops_batch200=round(rate / 1e9, 1),
        matmul_gflops_batch200_runs=[round(best / 1e9, 1) for best, _ in rates],
        matmul_gflops_batch200_median=round(median_rate / 1e9, 1),
        matmul_gflops_batch1600=round(rate_large / 1e9, 1),
        exported_ranker_forward_ms_200_rows=round(forward_ms, 2),
        floor_ms=round(floor_ms, 2),
        floor_ms_at_median_rate=round(request_flops / median_rate * 1e3, 2),
        ceiling_rps=round(ceiling, 1),
        threads=args.threads,
        server_settings=args.server,
    )
    if {1, 8, 32} <= set(results):
        one, eight, many = results[1], results[8], results[32]
        emit(
            figure="targets",
            c1_p50_ms=one["p50_ms"],
            c1_p50_limit_ms=round(floor_ms + 3, 2),
            c1_p50_limit_ms_at_median_rate=round(request_flops / median_rate * 1e3 + 3, 2),
            c1_ok=one["p50_ms"] <= floor_ms + 3,
            c32_throughput_share_of_ceiling=round(many["throughput_rps"] / ceiling, 3),
            c32_ok=many["throughput_rps"] >= 0.7 * ceiling and not many["errors"],
            c8_p99_over_c1_p50=round(eight["p99_ms"] / one["p50_ms"], 2),
            c8_ok=eight["p99_ms"] < 4 * one["p50_ms"],
        )


if __name__ == "__main__":
    main()
