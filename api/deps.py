"""FastAPI dependencies: app state and the caller's identity. (Handlers open their own database session:
see api/jobs/routes.py.)

The identity check uses a session of its own that is closed at once, so a request holds a pooled database
connection only while its handler uses one, never for a whole upload; and a key's owner is remembered for
`auth_cache_seconds`, so polling clients cost one query per request instead of two.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from api.state import AppState
from shared.db.keys import hash_key, owner_for_key
from shared.errors import AuthError


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain-def dependency in the thread pool, a hop per request for nothing
    return request.app.state.lorabake


def _lookup_owner(state: AppState, key: str) -> str | None:
    with state.sessions() as session:
        return owner_for_key(session, key)


async def current_owner(request: Request, state: Annotated[AppState, Depends(get_state)]) -> str:
    """Async, so a remembered key costs no trip through the thread pool."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise AuthError(
            "send an API key as 'Authorization: Bearer KEY' (create one with `lorabake create-key`)",
            code="missing_api_key",
        )
    key_hash = hash_key(key)
    owner = state.owners.get(key_hash)
    if owner is None:
        owner = await run_in_threadpool(_lookup_owner, state, key)
        if owner is None:
            raise AuthError("the API key is unknown or revoked", code="invalid_api_key")
        state.owners.put(key_hash, owner)
    return owner


# The parameters every route takes, named once.
Owner = Annotated[str, Depends(current_owner)]
State = Annotated[AppState, Depends(get_state)]
