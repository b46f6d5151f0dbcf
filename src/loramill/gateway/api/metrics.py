"""Gateway metrics, on the same registry as the worker's so ``loramill serve`` exposes one page.

Labels are closed sets: the route *template* (``/v1/jobs/{job_id}``), never the concrete path, so
job ids cannot create time series.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loramill import metrics as shared
from loramill.domain.status import JobKind
from loramill.errors import LoramillError

REQUESTS = Counter("loramill_http_requests_total", "HTTP requests answered, by method, route and status.",
                   ["method", "route", "status"], registry=shared.REGISTRY)
REQUEST_SECONDS = Histogram("loramill_http_request_duration_seconds", "Time to answer an HTTP request.",
                            ["method", "route"], registry=shared.REGISTRY,
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf")))
SUBMITTED = Counter("loramill_jobs_submitted_total", "Jobs accepted by the gateway, by kind.", ["kind"],
                    registry=shared.REGISTRY)
REJECTED = Counter("loramill_jobs_rejected_total", "Job requests refused because the queue was full.",
                   registry=shared.REGISTRY)
QUEUED = Gauge("loramill_jobs_queued", "Jobs in the job store waiting for a worker, by kind.", ["kind"],
               registry=shared.REGISTRY)


def render(store: Any) -> tuple[bytes, str]:
    """The page, with the queue gauge read from the store at scrape time."""
    for kind in JobKind:
        try:
            QUEUED.labels(kind=kind).set(store.count_queued(kind))
        except LoramillError:
            pass  # /readyz reports the store; a scrape still shows the rest
    return shared.render()


class MetricsMiddleware:
    """Counts and times every request by its route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            REQUEST_SECONDS.labels(scope["method"], route).observe(time.perf_counter() - start)
