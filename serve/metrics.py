"""Prometheus metrics of ``serve.http`` (``GET /metrics``), through ``prometheus_client``.

One :class:`ServerMetrics` per app, on its own registry (several apps in one process do
not share counters):

* ``nasdeploy_requests_total{path, status}``: every HTTP response, by route and status;
* ``nasdeploy_request_duration_seconds{path}``: time from the request to its response;
* ``nasdeploy_batch_size``: images per inference call (1 without dynamic batching);
* ``nasdeploy_inference_duration_seconds``: wall time of one inference call;
* ``nasdeploy_queue_depth``: requests waiting for or in an inference call.

:class:`MetricsMiddleware` records the first two for every request, errors included.
Imports: prometheus_client, starlette.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
ROUTES = ("/", "/info", "/health", "/predict", "/metrics")


class ServerMetrics:
    """The server's metrics on a private registry; :meth:`render` is the ``/metrics`` body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("nasdeploy_requests", "HTTP responses by route and status",
                                ["path", "status"], registry=self.registry)
        self.duration = Histogram("nasdeploy_request_duration_seconds", "Time from request to response",
                                  ["path"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("nasdeploy_batch_size", "Images per inference call",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.inference = Histogram("nasdeploy_inference_duration_seconds", "Wall time of one inference call",
                                   buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("nasdeploy_queue_depth", "Requests waiting for or in an inference call",
                                 registry=self.registry)

    def batch(self, size: int, seconds: float) -> None:
        """Record one inference call of ``size`` images."""
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP response by route and status, and times it."""

    def __init__(self, app: Any, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        path = path if path in ROUTES else "other"  # unknown paths must not grow the label set
        start = time.perf_counter()
        status = [500]

        async def recording_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.requests.labels(path, str(status[0])).inc()
            self.metrics.duration.labels(path).observe(time.perf_counter() - start)
