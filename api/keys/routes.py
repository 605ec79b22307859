"""/v1/keys: tenants' API keys, managed over the API. Admin keys create keys and see every owner's; a
tenant key sees and may revoke its own owner's keys only. A key is shown once, when it is made."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import Admin, Caller, ScopeError, State
from api.idempotency import IdempotentRoute, idempotent
from api.keys.schemas import KeyCreate, KeyCreated, KeyList, KeyOut
from api.pagination import Cursor, newest_first_page
from api.schemas import error_responses
from shared.db.keys import Identity, add_api_key, checked_scopes
from shared.db.models import ApiKey, is_object_id, utcnow
from shared.errors import NotFoundError

router = APIRouter(prefix="/v1/keys", tags=["keys"], route_class=IdempotentRoute)
_ERRORS = error_responses(401, 403, 404, 422, 503)


@router.post("", status_code=201, response_model=KeyCreated, responses=_ERRORS, operation_id="create_key")
@idempotent(secret_fields=("key",))
def create_key(body: KeyCreate, admin: Admin, state: State) -> KeyCreated:
    """A new key for `owner` (any owner: this is how tenants are made). Its `key` is in this response only."""
    scopes = checked_scopes(body.scopes)
    limits = body.limits.model_dump(exclude_none=True)
    with state.sessions() as session:
        row, key = add_api_key(session, body.owner, body.name, scopes=scopes, admin=body.admin, limits=limits)
        session.commit()
        return KeyCreated(**KeyOut.of(row).model_dump(), key=key)


def _visible_owner(caller: Identity, owner: str | None) -> str | None:
    """Whose keys the caller may list: anyone's (None) or one owner's for an admin, its own otherwise."""
    if caller.admin:
        return owner
    if owner is not None and owner != caller.owner:
        raise ScopeError("only an admin key lists another owner's keys", details={"scope": "admin"})
    return caller.owner


@router.get("", response_model=KeyList, responses=_ERRORS, operation_id="list_keys")
def list_keys(
    caller: Caller,
    state: State,
    owner: Annotated[str | None, Query(max_length=200, description="admin keys: only this owner's")] = None,
    include_revoked: bool = False,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Cursor = None,
) -> KeyList:
    """Newest first, without the keys themselves; `last_used_at` shows which are still in use."""
    visible = _visible_owner(caller, owner)
    query = select(ApiKey)
    if visible is not None:
        query = query.where(ApiKey.owner == visible)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    with state.sessions() as session:
        rows, next_cursor = newest_first_page(session, query, ApiKey, visible, cursor, limit)
        return KeyList(items=[KeyOut.of(r) for r in rows], next_cursor=next_cursor)


def _visible_key(session: Session, caller: Identity, key_id: str) -> ApiKey:
    row = session.get(ApiKey, key_id) if is_object_id(key_id) else None
    if row is None or not (caller.admin or row.owner == caller.owner):  # another owner's: as if missing
        raise NotFoundError(f"no key {key_id}", details={"key_id": key_id})
    return row


@router.get("/{key_id}", response_model=KeyOut, responses=_ERRORS, operation_id="get_key")
def get_key(key_id: str, caller: Caller, state: State) -> KeyOut:
    """One key (never the key itself): an admin's any, a tenant's its own owner's."""
    with state.sessions() as session:
        return KeyOut.of(_visible_key(session, caller, key_id))


@router.delete("/{key_id}", response_model=KeyOut, responses=_ERRORS, operation_id="revoke_key")
def revoke_key(key_id: str, caller: Caller, state: State) -> KeyOut:
    """Revoke a key: it stops working at once on this API process, within `auth_cache_seconds` on others.
    Revoking a revoked key changes nothing."""
    with state.sessions() as session:
        row = _visible_key(session, caller, key_id)
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            session.commit()
        state.keys.evict(row.key_hash)
        return KeyOut.of(row)
