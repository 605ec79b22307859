"""`GET /metrics` in Prometheus' format, and the HTTP metrics behind it.

Each app has a registry of its own (tests build several apps in one process), holding:
- the HTTP counter and latency histogram, recorded by a plain ASGI middleware (`http.py`);
- one collector (`collectors.py`) that reads the database and the broker at scrape time, so every API replica
  reports the same numbers for the service as a whole (`reads.py` holds the queries).

The worker's own numbers (GPU memory, its job's steps) are served by each worker on a port of its own
(`worker/metrics/`), since only that process sees them.
"""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, disable_created_metrics

from api.metrics import routes
from api.metrics.collectors import ServiceCollector
from api.metrics.http import HttpMetrics, HttpMetricsMiddleware
from api.state import AppState


def install_metrics(app: FastAPI, state: AppState) -> None:
    """The /metrics route and the middleware that counts requests. Call it before CORS is added: CORS then
    wraps it and answers preflights itself, which are not counted (as `unmatched`) here."""
    # `*_created` series (when each label set was first seen) would double the series for nothing we use
    disable_created_metrics()
    registry = CollectorRegistry()
    http = HttpMetrics(registry)
    registry.register(ServiceCollector(state.settings, state.sessions))
    app.state.metrics_registry = registry
    app.add_middleware(HttpMetricsMiddleware, metrics=http)
    app.include_router(routes.router)
