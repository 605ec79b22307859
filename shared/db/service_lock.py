"""A named lock with an expiry in the database, so that one process at a time runs a periodic duty (the
reconciler) on Postgres and SQLite alike; a holder that dies loses it when it expires."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db.models import ServiceLock, utcnow


def try_lock(session: Session, name: str, holder: str, ttl_seconds: float) -> bool:
    """Takes or renews the lock for `holder`; False while another holder's lock is live. Commits."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl_seconds)
    taken = session.execute(
        update(ServiceLock)
        .execution_options(synchronize_session=False)  # rows are re-read, not patched
        .where(ServiceLock.name == name, or_(ServiceLock.holder == holder, ServiceLock.expires_at <= now))
        .values(holder=holder, expires_at=expires)
    )
    if taken.rowcount == 1:
        session.commit()
        return True
    if session.get(ServiceLock, name) is not None:
        session.rollback()
        return False
    try:
        session.add(ServiceLock(name=name, holder=holder, expires_at=expires))
        session.commit()
    except IntegrityError:  # another process created it first
        session.rollback()
        return False
    return True


def release_lock(session: Session, name: str, holder: str) -> None:
    """Gives the lock up at once (if `holder` has it), so another process takes the duty. Commits."""
    session.execute(
        update(ServiceLock)
        .execution_options(synchronize_session=False)
        .where(ServiceLock.name == name, ServiceLock.holder == holder)
        .values(expires_at=utcnow())
    )
    session.commit()
