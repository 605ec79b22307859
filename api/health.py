"""Liveness (the process answers) and readiness (it can reach the database, the broker and storage).

Readiness runs the three checks at once, each in a thread, and answers within READY_TIMEOUT_SECONDS whatever
is down or hung: a check still running by then is reported as timed out (its thread finishes on its own,
bounded by the client timeouts of shared.db.session, shared.queue and shared.storage). Workers alive are
reported, from their heartbeats, but do not make the API unready: jobs wait in the queue for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api.deps import get_state
from api.state import AppState
from shared.jobs.workers import workers_alive

router = APIRouter(tags=["health"])
READY_TIMEOUT_SECONDS = 1.5


@router.get("/healthz", operation_id="get_health")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers (checks nothing else)."""
    return {"status": "ok"}


def _database(state: AppState) -> str:
    with state.sessions() as session:
        # also proves the schema was migrated (`lorabake migrate`)
        session.execute(text("SELECT version_num FROM alembic_version"))
    return "ok"


def _workers(state: AppState) -> int:
    with state.sessions() as session:
        return workers_alive(session, within_seconds=3 * state.settings.lease_renew_seconds)


def _broker(state: AppState) -> str:
    with state.celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=state.settings.broker_timeout_seconds)
    return "ok"


def _storage(state: AppState) -> str:
    state.store.check()
    return "ok"


async def _attempt(check: Callable[[AppState], str], state: AppState) -> str:
    try:
        return await asyncio.wait_for(run_in_threadpool(check, state), READY_TIMEOUT_SECONDS)
    except TimeoutError:
        return f"error: no answer within {READY_TIMEOUT_SECONDS}s"
    except Exception as exc:  # readiness reports every failure instead of stopping at the first
        return f"error: {type(exc).__name__}: {exc}"[:300]


async def _count_workers(state: AppState) -> int | None:
    """Informational: jobs wait in the queue while no worker is alive."""
    try:
        return await asyncio.wait_for(run_in_threadpool(_workers, state), READY_TIMEOUT_SECONDS)
    except Exception:
        return None


class Readiness(BaseModel):
    status: str = Field(description="ready or not_ready")
    checks: dict[str, str] = Field(description="database, broker, storage: ok, or the error")
    workers_alive: int | None = Field(description="workers whose heartbeat is recent (informational)")


@router.get(
    "/readyz",
    response_class=JSONResponse,
    responses={
        200: {"model": Readiness},
        503: {"model": Readiness, "description": "not ready (Retry-After)"},
    },
    operation_id="get_readiness",
)
async def readyz(state: Annotated[AppState, Depends(get_state)]) -> JSONResponse:
    """Readiness: the database (migrated), the broker and storage answer, within 2 s; 503 otherwise."""
    names = ("database", "broker", "storage")
    *results, workers = await asyncio.gather(
        *(_attempt(c, state) for c in (_database, _broker, _storage)), _count_workers(state)
    )
    checks = dict(zip(names, results, strict=True))
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks, "workers_alive": workers},
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": "5"},
    )
