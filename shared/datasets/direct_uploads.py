"""Uploads put straight into storage (POST /v1/uploads): where their object lives, the checks before one is
taken, taking it (once, atomically), and deleting those that expired (the reconciler's pass).

An upload is single-use: a dataset or job that takes it, accepted or refused, uses it up and its object is
deleted. Its row stays until `expires_at` so that a second use is refused as such (`upload_used`).
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Upload, as_utc, is_object_id, utcnow
from shared.errors import ConflictError, LorabakeError
from shared.storage import ObjectStore

log = logging.getLogger("lorabake.uploads")
CONTENT_TYPE = "application/zip"


def upload_prefix(upload_id: str) -> str:
    return f"uploads/{upload_id}/"


def upload_key(upload_id: str) -> str:
    return upload_prefix(upload_id) + "dataset.zip"


def unknown_upload(upload_id: str) -> LorabakeError:
    return LorabakeError(
        f"no upload {upload_id}", code="unknown_upload", details={"field": "upload_id"}, status_code=422
    )


def upload_used(upload_id: str) -> ConflictError:
    return ConflictError(
        f"upload {upload_id} was used already; each upload makes one dataset or job (create another)",
        code="upload_used",
        details={"field": "upload_id"},
    )


def owned_upload(session: Session, owner: str, upload_id: str) -> Upload:
    """The owner's upload; another owner's is as missing as one that never was."""
    upload = session.get(Upload, upload_id) if is_object_id(upload_id) else None
    if upload is None or upload.owner != owner:
        raise unknown_upload(upload_id)
    return upload


def is_expired(upload: Upload, now: datetime) -> bool:
    return as_utc(upload.expires_at) <= now


def pending_uploads(session: Session, owner: str, now: datetime) -> tuple[int, datetime | None]:
    """How many of the owner's uploads are neither used nor expired, and when the first of them expires."""
    count, first_expiry = session.execute(
        select(func.count(Upload.id), func.min(Upload.expires_at)).where(
            Upload.owner == owner, Upload.used_at.is_(None), Upload.expires_at > now
        )
    ).one()
    return int(count), as_utc(first_expiry) if first_expiry is not None else None


def claim(session: Session, upload_id: str) -> bool:
    """Marks the upload used; False when it was already (two requests racing for it: one wins). Commits."""
    taken = session.execute(
        update(Upload)
        .execution_options(synchronize_session=False)
        .where(Upload.id == upload_id, Upload.used_at.is_(None))
        .values(used_at=utcnow())
    )
    session.commit()
    return taken.rowcount == 1


def release(session: Session, upload_id: str) -> None:
    """Usable again: what took it failed for an outage, not for what the upload holds. Commits."""
    session.execute(
        update(Upload)
        .execution_options(synchronize_session=False)
        .where(Upload.id == upload_id)
        .values(used_at=None)
    )
    session.commit()


def forget(sessions: sessionmaker[Session], store: ObjectStore, upload_id: str) -> bool:
    """Deletes the object, then the row (so a failed delete is tried again at the next pass)."""
    try:
        store.delete_prefix(upload_prefix(upload_id))
    except Exception:
        log.warning("upload %s: could not delete its object; trying again later", upload_id, exc_info=True)
        return False
    with sessions() as session:
        session.execute(delete(Upload).where(Upload.id == upload_id))
        session.commit()
    return True


def expire_uploads(
    sessions: sessionmaker[Session], store: ObjectStore, now: datetime | None = None, limit: int = 200
) -> list[str]:
    """Deletes uploads past `expires_at`, used or not, with their objects; returns their ids."""
    now = now or utcnow()
    with sessions() as session:
        expired = list(
            session.scalars(
                select(Upload.id).where(Upload.expires_at <= now).order_by(Upload.expires_at).limit(limit)
            )
        )
    return [upload_id for upload_id in expired if forget(sessions, store, upload_id)]
