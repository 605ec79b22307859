"""The FastAPI application factory."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import health
from api.comparisons import routes as comparisons
from api.continuation import routes as continuation
from api.datasets import routes as datasets
from api.direct_uploads import routes as direct_uploads
from api.errors import install_error_handlers
from api.generations import routes as generations
from api.jobs import routes as jobs
from api.keys import routes as keys
from api.metrics import install_metrics
from api.models import routes as models
from api.openapi_doc import install_security_scheme
from api.plan import routes as plan
from api.presets import routes as presets
from api.queue import routes as queue
from api.request_log import RequestIdMiddleware
from api.state import AppState
from api.usage import routes as usage
from api.web_page import install_web_page
from api.webhooks import routes as webhooks
from shared.jobs.reconciler import Reconciler
from shared.jobs.sweeper import start_retention_sweeper
from shared.jobs.workers import worker_id
from shared.periodic import PeriodicThread
from shared.settings import Settings, get_settings

log = logging.getLogger("lorabake.api")


def start_reconciler(state: AppState) -> PeriodicThread | None:
    """Every API process runs the reconciler (a database lock lets one act at a time), so a deployment
    has one with no extra setup."""
    settings = state.settings
    if settings.reconcile_interval_seconds <= 0:
        return None
    reconciler = Reconciler(
        settings, state.sessions, state.dispatcher, state.store, holder=f"api:{worker_id()}"
    )
    return PeriodicThread("reconciler", settings.reconcile_interval_seconds, reconciler.run_once).start()


def start_scheduler(state: AppState) -> PeriodicThread | None:
    """Every API process runs the scheduler too (a database lock lets one act at a time)."""
    interval = state.settings.schedule_interval_seconds
    return PeriodicThread("scheduler", interval, state.scheduler.run_once).start() if interval > 0 else None


def start_queue_standings(state: AppState) -> PeriodicThread | None:
    """Each API process keeps every queue's table of places and expected starts (api/queue/service.py), so
    a poll of a queued job reads memory."""
    interval = state.settings.schedule_interval_seconds
    standing = state.job_views.standing
    return PeriodicThread("queue standings", interval, standing.refresh).start() if interval > 0 else None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Requests served at once in threads; the pool is sized to give each of them a connection.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        # Everything built so far lives as long as the process: keep it out of the collector's full passes,
        # which otherwise walk it all and stall requests (p99 60-90 ms -> ~20 ms in bench/api_read.py).
        gc.freeze()
        if state.reader is not None:
            await state.reader.open()
        duties = [
            start_reconciler(state),
            start_scheduler(state),
            start_queue_standings(state),
            start_retention_sweeper(settings, state.sessions, state.store, f"api:{worker_id()}"),
        ]
        try:
            yield
        finally:
            for duty in duties:
                if duty is not None:
                    duty.stop()
            await state.events.close()
            if state.reader is not None:
                await state.reader.close()

    app = FastAPI(
        title="lorabake",
        version="1",
        description="Train Kohya-compatible LoRAs: upload a dataset zip and a config, download each epoch.",
        lifespan=lifespan,
    )
    state = AppState.build(settings)
    app.state.lorabake = state
    install_error_handlers(app)

    app.add_middleware(RequestIdMiddleware, access_log=settings.access_log)
    install_metrics(app, state)  # GET /metrics, and the request counts (inside CORS, outside the rest)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "X-Request-ID",
                "Last-Event-ID",
                "Idempotency-Key",
            ],
            expose_headers=["Location", "X-Request-ID", "Retry-After", "Idempotent-Replayed"],
        )
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.include_router(direct_uploads.router)
    app.include_router(plan.router)
    app.include_router(presets.router)
    app.include_router(models.router)
    app.include_router(keys.router)
    app.include_router(webhooks.router)
    app.include_router(queue.router)
    app.include_router(generations.router)
    app.include_router(comparisons.router)
    app.include_router(continuation.router)
    app.include_router(usage.router)
    install_security_scheme(app)
    install_web_page(app)  # GET / and /assets: the web page (api/web/), outside the OpenAPI document
    return app
