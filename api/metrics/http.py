"""Requests by route and status, counted by a plain ASGI middleware (like api/request_log.py: no extra task
or stream per request, and streamed answers such as event streams pass through untouched).

Routes are labelled by their template (`/v1/jobs/{job_id}`), never the raw path, so the label set stays
bounded; a request no route matched is `unmatched`. Latency is measured to the start of the answer (its
status and headers): an event stream's or a download's whole life would say nothing about how fast the API
answers, and for every other answer the body follows at once.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "lorabake_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "lorabake_http_request_duration_seconds",
            "Time from a request's arrival to the start of its answer, by method and route template.",
            ["method", "route"],
            registry=registry,
        )

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in METHODS else "other"  # clients choose methods too
        route = route_template(scope)
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


def route_template(scope: Scope) -> str:
    """The path template of the route the router matched (it leaves the route in the scope)."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else UNMATCHED


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered = False

        async def send_observed(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                self.metrics.observe(scope, message["status"], time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except Exception:
            if not answered:  # the server answers 500 for an error that escaped the app
                self.metrics.observe(scope, 500, time.perf_counter() - started)
            raise
