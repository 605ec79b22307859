"""The FastAPI application factory."""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware

from api.errors import install_error_handlers
from api.routes import datasets, health, jobs, plan
from api.state import AppState
from shared.settings import Settings, get_settings

log = logging.getLogger("lorabake.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="lorabake",
        version="1",
        description="Train Kohya-compatible LoRAs: upload a dataset zip and a config, download each epoch.",
    )
    app.state.lorabake = AppState.build(settings)
    install_error_handlers(app)

    @app.middleware("http")
    async def request_id(request: Request, call_next) -> Response:  # noqa: ANN001
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = rid
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        log.info(
            "%s %s -> %s in %.1f ms [request %s]",
            request.method,
            request.url.path,
            response.status_code,
            1000 * (time.perf_counter() - started),
            rid,
        )
        return response

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "Last-Event-ID"],
            expose_headers=["Location", "X-Request-ID"],
        )
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.include_router(plan.router)
    return app
