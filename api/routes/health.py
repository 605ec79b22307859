"""Liveness (the process answers) and readiness (it can reach the database, the broker and storage)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api.deps import get_state
from api.state import AppState

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_all(state: AppState) -> dict[str, str]:
    results: dict[str, str] = {}

    def attempt(name: str, check) -> None:  # noqa: ANN001
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # readiness reports every failure instead of stopping at the first
            results[name] = f"error: {type(exc).__name__}: {exc}"[:300]

    def database() -> None:
        with state.sessions() as session:
            # also proves the schema was migrated (`lorabake migrate`)
            session.execute(text("SELECT version_num FROM alembic_version"))

    def broker() -> None:
        with state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)

    attempt("database", database)
    attempt("broker", broker)
    attempt("storage", state.store.check)
    return results


@router.get("/readyz")
async def readyz(state: Annotated[AppState, Depends(get_state)]) -> JSONResponse:
    checks = await run_in_threadpool(_check_all, state)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503
    )
