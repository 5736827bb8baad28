"""A small client of the recsys.v1 services, as a Python API and a command.

python -m serving.client recommend --target 127.0.0.1:50051 --user u1 --k 10 [--json]
python -m serving.client recommend --user u1 --exclude i3 i7 --context device=phone
python -m serving.client --health [--target ...]       # exit 0 when SERVING
python -m serving.client reload --bundle bundles/new   # hot reload (Admin.Reload)
python -m serving.client status

with RecommenderClient("127.0.0.1:50051") as client:
    result = client.recommend("u1", k=10)   # RecommendResult: items, scores, ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.proto.recsys.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    recommender_pb2,
    recommender_pb2_grpc,
)

DEFAULT_TARGET = "127.0.0.1:50051"


@dataclass
class RecommendResult:
    items: list[str]
    scores: list[float]
    model_version: str
    fallback: bool
    elapsed_ms: float  # round trip seen by the client
    timings: dict[str, float] = field(default_factory=dict)  # server-side stages (ms)


def _channel(
    target: str, ca: str | None = None, cert: str | None = None, key: str | None = None
) -> grpc.Channel:
    """Plaintext, or TLS when `ca` (the server's CA) is given; `cert` + `key`: a client
    certificate for servers that require one (serve config `tls.client_ca`)."""
    if ca:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(ca).read_bytes(),
            private_key=Path(key).read_bytes() if key else None,
            certificate_chain=Path(cert).read_bytes() if cert else None,
        )
        return grpc.secure_channel(target, credentials)
    return grpc.insecure_channel(target)


class RecommenderClient:
    """Blocking client of Recommender (and Admin / health) at `target` (host:port)."""

    def __init__(
        self,
        target: str,
        timeout: float = 5.0,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = _channel(target, ca, cert, key)
        self._stub = recommender_pb2_grpc.RecommenderStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        candidate_count: int | None = None,
        context: Mapping[str, str] | None = None,
        exclude: Iterable[str] = (),
    ) -> RecommendResult:
        request = recommender_pb2.RecommendRequest(
            user_id=user_id,
            k=k,
            candidate_count=candidate_count or 0,
            context=dict(context or {}),
            exclude_item_ids=list(exclude),
        )
        t0 = time.perf_counter()
        reply = self._stub.Recommend(request, timeout=self.timeout)
        elapsed = (time.perf_counter() - t0) * 1e3
        t = reply.timings
        return RecommendResult(
            items=[it.item_id for it in reply.items],
            scores=[it.score for it in reply.items],
            model_version=reply.model_version,
            fallback=reply.fallback,
            elapsed_ms=elapsed,
            timings={
                "features_ms": t.features_ms,
                "recall_ms": t.recall_ms,
                "rank_ms": t.rank_ms,
                "total_ms": t.total_ms,
            },
        )

    def health(self, service: str = "") -> str:
        """The health status name (SERVING, NOT_SERVING, ...) of `service` ("" = the server)."""
        reply = self._health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self.timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def reload(self, bundle: str = "", timeout: float = 600.0) -> admin_pb2.ReloadResponse:
        return self._admin.Reload(admin_pb2.ReloadRequest(bundle=bundle), timeout=timeout)

    def status(self) -> admin_pb2.StatusResponse:
        return self._admin.Status(admin_pb2.StatusRequest(), timeout=self.timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _table(result: RecommendResult) -> str:
    lines = [
        f"model {result.model_version}"
        + ("  (fallback: popular items, user unknown)" if result.fallback else ""),
        f"{'rank':>4}  {'item':<24} {'score':>10}",
    ]
    for i, (item, score) in enumerate(zip(result.items, result.scores, strict=True), 1):
        lines.append(f"{i:>4}  {item:<24} {score:>10.4f}")
    lines.append(
        f"{len(result.items)} items in {result.elapsed_ms:.1f} ms (server: "
        + ", ".join(f"{k[:-3]} {v:.1f}" for k, v in result.timings.items())
        + " ms)"
    )
    return "\n".join(lines)


def _context(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: --context takes key=value, got {pair!r}")
        out[key] = value
    return out


def _connection_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--target and TLS options; on subcommands with SUPPRESS defaults, so they may come
    before or after the command (`--target X recommend ...` or `recommend --target X ...`)."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--target", default=default(DEFAULT_TARGET), help="server host:port")
    parser.add_argument("--timeout", type=float, default=default(5.0), help="seconds per call")
    parser.add_argument("--ca", default=default(None), help="PEM of the server's CA (TLS)")
    parser.add_argument("--cert", default=default(None), help="client certificate PEM")
    parser.add_argument("--key", default=default(None), help="client private key PEM")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.client", description=__doc__)
    _connection_options(parser, defaults=True)
    parser.add_argument("--health", action="store_true", help="check health and exit")
    sub = parser.add_subparsers(dest="command")
    rec = sub.add_parser("recommend", help="recommend items for a user")
    rec.add_argument("--user", required=True)
    rec.add_argument("--k", type=int, default=10)
    rec.add_argument("--candidates", type=int, default=0, help="0 = the server's default")
    rec.add_argument("--context", nargs="*", default=[], metavar="KEY=VALUE")
    rec.add_argument("--exclude", nargs="*", default=[], metavar="ITEM")
    rec.add_argument("--json", action="store_true", help="print JSON instead of a table")
    health = sub.add_parser("health", help="check health")
    reload = sub.add_parser("reload", help="hot reload a bundle (Admin.Reload)")
    reload.add_argument("--bundle", default="", help="bundle dir on the server; none = same")
    status = sub.add_parser("status", help="what the server serves (Admin.Status)")
    for command in (rec, health, reload, status):
        _connection_options(command, defaults=False)
    args = parser.parse_args(argv)
    command = "health" if args.health else args.command
    if command is None:
        parser.error("give a command (recommend, health, reload, status) or --health")
    with RecommenderClient(args.target, args.timeout, args.ca, args.cert, args.key) as client:
        try:
            if command == "health":
                status = client.health()
                print(status)
                return 0 if status == "SERVING" else 1
            if command == "reload":
                reply = client.reload(args.bundle)
                print(
                    f"serving {reply.model_version} (was {reply.previous_version}); "
                    f"loaded in {reply.load_seconds:.1f} s"
                )
                return 0
            if command == "status":
                print(client.status())
                return 0
            result = client.recommend(
                args.user, args.k, args.candidates, _context(args.context), args.exclude
            )
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    print(json.dumps(asdict(result)) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
