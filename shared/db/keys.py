"""API keys: random, shown once, stored as a sha256 hash (they are high-entropy, so a fast hash is enough)."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import ApiKey

KEY_PREFIX = "lb_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, owner: str, name: str = "") -> str:
    """Stores a new key for `owner` and returns the plaintext, which is never stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(owner=owner, name=name, prefix=key[:10], key_hash=hash_key(key)))
    session.flush()
    return key


def owner_for_key(session: Session, key: str) -> str | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))
    return row.owner if row else None
