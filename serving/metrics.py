"""Prometheus metrics of one server process (prometheus-client, own registry).

    recsys_requests_total{method, code}        calls by method and final gRPC status
    recsys_request_seconds{method}             latency of each call, as the server saw it
    recsys_stage_seconds{stage}                features | recall | rank | total (Recommend)
    recsys_in_flight_requests                  calls in progress (admission control counts these)
    recsys_rank_batch_rows                     rows per ranker forward (concurrent requests batched)
    recsys_model_info{version, bundle}         1 for the bundle being served
    recsys_reloads_total{result}               hot reloads: ok | refused

Each server has its own CollectorRegistry so several servers (tests, split deployments in
one process) never share counters.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# 0.5 ms .. 10 s: a Recommend is a few ms on a quiet machine, seconds under overload
BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.004,
    0.006,
    0.008,
    0.012,
    0.016,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)
STAGES = ("features", "recall", "rank", "total")


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "recsys_requests", "gRPC calls by method and status", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "recsys_request_seconds", "call latency", ["method"], buckets=BUCKETS, registry=r
        )
        self.stages = Histogram(
            "recsys_stage_seconds", "time per request stage", ["stage"], buckets=BUCKETS, registry=r
        )
        self.in_flight = Gauge("recsys_in_flight_requests", "calls in progress", registry=r)
        self.batch_rows = Histogram(
            "recsys_rank_batch_rows",
            "rows per ranker forward pass",
            buckets=(1, 10, 50, 100, 200, 400, 800, 1600, 3200, 6400, 12800),
            registry=r,
        )
        self.model = Gauge(
            "recsys_model_info", "the bundle being served", ["version", "bundle"], registry=r
        )
        self.reloads = Counter("recsys_reloads", "hot reloads by result", ["result"], registry=r)
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    def stage(self, name: str, ms: float) -> None:
        self.stages.labels(name).observe(ms / 1e3)

    def set_model(self, version: str, bundle: str) -> None:
        self.model.clear()
        self.model.labels(version, bundle).set(1)

    def serve_http(self, host: str, port: int) -> int:
        """Expose /metrics on host:port (0 = a free port); returns the port."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = (server, thread)
        return int(server.server_port)

    def stop_http(self) -> None:
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join()
            self._http = None
