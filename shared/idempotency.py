"""Idempotency keys as rows (the HTTP side, Stripe's semantics, is api/idempotency.py).

A request claims its owner's key in a transaction of its own before it runs: of two at once, the primary key
lets one win and shows the other the key held. The winner then keeps its answer for the replay window, or
lets go of the key when it has nothing to keep. A claim is renewed while its request runs, so one whose
process stopped lapses within CLAIM_SECONDS instead of holding the key for the whole window.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import IdempotencyKey, utcnow

IN_PROGRESS, DONE = "in_progress", "done"
CLAIM_SECONDS = 60.0


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    """One request's hold on (owner, key); `token` tells its row from a later claim of the same key."""

    owner: str
    key_sha256: str
    token: str

    def mine(self) -> tuple[ColumnElement[bool], ...]:
        row = IdempotencyKey
        return (row.owner == self.owner, row.key_sha256 == self.key_sha256, row.token == self.token)


@dataclass(frozen=True)
class Held:
    """What a repeat finds: a request still in progress, or the first one's answer."""

    state: str
    token: str
    fingerprint: str | None
    status_code: int | None
    body: Any
    headers: dict[str, str]


def take(sessions: sessionmaker[Session], claim: Claim, now: datetime | None = None) -> Held | None:
    """Takes the key for this request (None), or returns what holds it. A row past `expires_at` (an
    answer out of its window, a lapsed claim) is deleted on the way, so the key is taken afresh."""
    now = now or utcnow()
    row = IdempotencyKey
    for _ in range(3):  # the holder may let go between our insert and our read: then try again
        with sessions() as session:
            session.execute(
                delete(row).where(
                    row.owner == claim.owner, row.key_sha256 == claim.key_sha256, row.expires_at <= now
                )
            )
            session.add(
                IdempotencyKey(
                    owner=claim.owner,
                    key_sha256=claim.key_sha256,
                    token=claim.token,
                    state=IN_PROGRESS,
                    created_at=now,
                    expires_at=now + timedelta(seconds=CLAIM_SECONDS),
                )
            )
            try:
                session.commit()
                return None
            except IntegrityError:
                session.rollback()
            held = session.get(row, (claim.owner, claim.key_sha256))
            if held is not None:
                return Held(
                    held.state,
                    held.token,
                    held.fingerprint,
                    held.status_code,
                    held.response_body,
                    dict(held.response_headers or {}),
                )
    return Held(IN_PROGRESS, "", None, None, None, {})


def renew(sessions: sessionmaker[Session], claim: Claim) -> None:
    with sessions() as session:
        session.execute(
            update(IdempotencyKey)
            .where(*claim.mine(), IdempotencyKey.state == IN_PROGRESS)
            .values(expires_at=utcnow() + timedelta(seconds=CLAIM_SECONDS))
        )
        session.commit()


def finish(
    sessions: sessionmaker[Session],
    claim: Claim,
    fingerprint: str,
    status_code: int,
    body: Any,
    headers: dict[str, str],
    keep_hours: float,
) -> None:
    """Keeps the answer for `keep_hours` (from now, when it was given)."""
    with sessions() as session:
        session.execute(
            update(IdempotencyKey)
            .where(*claim.mine(), IdempotencyKey.state == IN_PROGRESS)
            .values(
                state=DONE,
                fingerprint=fingerprint,
                status_code=status_code,
                response_body=body,
                response_headers=headers,
                expires_at=utcnow() + timedelta(hours=keep_hours),
            )
        )
        session.commit()


def release(sessions: sessionmaker[Session], claim: Claim) -> None:
    """Lets go of the key: the request was refused or failed, so a retry with it runs afresh."""
    with sessions() as session:
        session.execute(delete(IdempotencyKey).where(*claim.mine(), IdempotencyKey.state == IN_PROGRESS))
        session.commit()


def expire_idempotency_keys(sessions: sessionmaker[Session], now: datetime | None = None) -> int:
    """Deletes the rows past `expires_at` (the reconciler's passes); returns how many."""
    with sessions() as session:
        result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= (now or utcnow())))
        session.commit()
        return result.rowcount or 0
