"""API keys: random, shown once, stored as a sha256 hash (they are high-entropy, so a fast hash is enough).

A key belongs to an owner (the tenant whose jobs, datasets and webhooks it reaches) and carries scopes
(what it may do with them). An admin key may also manage every owner's keys (/v1/keys).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.db.models import ApiKey, as_utc, utcnow
from shared.errors import LorabakeError

KEY_PREFIX = "lb_"
# What a tenant key may be given; a key made without a list gets all of them.
SCOPES: tuple[str, ...] = (
    "jobs:read",
    "jobs:write",
    "datasets:read",
    "datasets:write",
    "webhooks:read",
    "webhooks:write",
)
# last_used_at is written at most this often per key: it answers "is this key still in use", not an audit.
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class Identity:
    """Who a request's key speaks for and what it may do."""

    key_id: str
    owner: str
    admin: bool
    scopes: frozenset[str]
    limits: tuple[tuple[str, float], ...] = ()  # (name, value) pairs of the key's limits

    def limit(self, name: str) -> float | None:
        return dict(self.limits).get(name)

    def allows(self, scope: str) -> bool:
        return self.admin or scope in self.scopes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def checked_scopes(scopes: Iterable[str] | None) -> list[str]:
    """The scopes to store: all of them for None; a 422 naming any unknown one."""
    if scopes is None:
        return list(SCOPES)
    wanted = list(dict.fromkeys(scopes))
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown:
        raise LorabakeError(
            f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}",
            code="invalid_scope",
            details={"field": "scopes", "scope": unknown[0]},
            status_code=422,
        )
    return wanted


def add_api_key(
    session: Session,
    owner: str,
    name: str = "",
    *,
    scopes: Iterable[str] | None = None,
    admin: bool = False,
    limits: dict | None = None,
) -> tuple[ApiKey, str]:
    """Stores a new key and returns its row and the plaintext, which is never stored. No commit."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        owner=owner,
        name=name,
        prefix=key[:10],
        key_hash=hash_key(key),
        admin=admin,
        scopes=checked_scopes(scopes),
        limits=limits or {},
    )
    session.add(row)
    session.flush()
    return row, key


def create_api_key(session: Session, owner: str, name: str = "", *, admin: bool = False) -> str:
    """A key with every scope for `owner` (an admin key with `admin`); returns the plaintext."""
    return add_api_key(session, owner, name, admin=admin)[1]


def identity_for_key(session: Session, key: str) -> Identity | None:
    """The key's identity, None when it is unknown or revoked; notes when it was last used. Commits."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))
    if row is None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - as_utc(row.last_used_at) >= LAST_USED_RESOLUTION:
        session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
        session.commit()
    limits = tuple(sorted((k, float(v)) for k, v in (row.limits or {}).items() if v is not None))
    return Identity(row.id, row.owner, row.admin, frozenset(row.scopes or ()), limits)


def owner_for_key(session: Session, key: str) -> str | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))
    return row.owner if row else None
