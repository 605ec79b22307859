"""FastAPI dependencies: app state and the caller's identity and scopes. (Handlers open their own database
session: see api/jobs/routes.py.)

The identity check uses a session of its own that is closed at once, so a request holds a pooled database
connection only while its handler uses one, never for a whole upload; and what a key stands for is
remembered for `auth_cache_seconds`, so polling clients cost one query per request instead of two.

Each route names the scope it needs (`JobsRead`, `DatasetsWrite`, ...); a key without it gets a 403 naming
the scope. `Owner` alone (any valid key) is for what is the same for every tenant: models, presets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from api.state import AppState
from shared.db.keys import Identity, hash_key, identity_for_key
from shared.errors import AuthError, LorabakeError


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain-def dependency in the thread pool, a hop per request for nothing
    return request.app.state.lorabake


def _lookup(state: AppState, key: str) -> Identity | None:
    with state.sessions() as session:
        return identity_for_key(session, key)


async def current_identity(request: Request, state: Annotated[AppState, Depends(get_state)]) -> Identity:
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
    identity = state.keys.get(key_hash)
    if identity is None:
        identity = await run_in_threadpool(_lookup, state, key)
        if identity is None:
            raise AuthError("the API key is unknown or revoked", code="invalid_api_key")
        state.keys.put(key_hash, identity)
    return identity


async def current_owner(identity: Annotated[Identity, Depends(current_identity)]) -> str:
    return identity.owner


class ScopeError(LorabakeError):
    status_code = 403
    code = "missing_scope"


def owner_with(scope: str) -> Callable[[Identity], Awaitable[str]]:
    """A dependency: the caller's owner, if its key has `scope`."""

    async def dependency(identity: Annotated[Identity, Depends(current_identity)]) -> str:
        if not identity.allows(scope):
            raise ScopeError(
                f"this API key lacks the scope {scope!r}", details={"scope": scope, "key_id": identity.key_id}
            )
        return identity.owner

    dependency.scope = scope  # type: ignore[attr-defined]  # read by the tests that check every route
    return dependency


def identity_with(scope: str) -> Callable[[Identity], Awaitable[Identity]]:
    """A dependency: the caller's identity, if its key has `scope` (for routes that need the key itself)."""
    check = owner_with(scope)

    async def dependency(identity: Annotated[Identity, Depends(current_identity)]) -> Identity:
        await check(identity)
        return identity

    dependency.scope = scope  # type: ignore[attr-defined]
    return dependency


async def admin_identity(identity: Annotated[Identity, Depends(current_identity)]) -> Identity:
    if not identity.admin:
        raise ScopeError(
            "this needs an admin key (`lorabake create-key --admin`)",
            details={"scope": "admin", "key_id": identity.key_id},
        )
    return identity


# The parameters routes take, named once.
State = Annotated[AppState, Depends(get_state)]
Caller = Annotated[Identity, Depends(current_identity)]
Owner = Annotated[str, Depends(current_owner)]
Admin = Annotated[Identity, Depends(admin_identity)]
JobsRead = Annotated[str, Depends(owner_with("jobs:read"))]
JobsWrite = Annotated[str, Depends(owner_with("jobs:write"))]
JobSubmitter = Annotated[Identity, Depends(identity_with("jobs:write"))]
DatasetsRead = Annotated[str, Depends(owner_with("datasets:read"))]
DatasetsWrite = Annotated[str, Depends(owner_with("datasets:write"))]
DatasetJobSubmitter = Annotated[Identity, Depends(identity_with("datasets:write"))]
WebhooksRead = Annotated[str, Depends(owner_with("webhooks:read"))]
WebhooksWrite = Annotated[str, Depends(owner_with("webhooks:write"))]
