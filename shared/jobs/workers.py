"""Worker heartbeats: each worker process says it is alive, so readiness and queue views can count them."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from shared.catalogue.records import forget_worker_models
from shared.db.models import WorkerProcess, utcnow


def worker_id(pid: int | None = None) -> str:
    """host:pid of this process (or of `pid` on this host)."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def record_heartbeat(session: Session, wid: str, queues: str) -> None:
    now = utcnow()
    row = session.get(WorkerProcess, wid)
    if row is None:
        session.add(
            WorkerProcess(
                id=wid, hostname=wid.rsplit(":", 1)[0], queues=queues, started_at=now, last_seen_at=now
            )
        )
    else:
        row.last_seen_at, row.queues = now, queues
    session.commit()


def forget_worker(session: Session, wid: str) -> None:
    forget_worker_models(session, [wid])
    session.execute(delete(WorkerProcess).where(WorkerProcess.id == wid))
    session.commit()


def workers_alive(session: Session, within_seconds: float) -> int:
    since = utcnow() - timedelta(seconds=within_seconds)
    return (
        session.scalar(select(func.count(WorkerProcess.id)).where(WorkerProcess.last_seen_at >= since)) or 0
    )


def forget_stale_workers(session: Session, older_than_seconds: float) -> None:
    since = utcnow() - timedelta(seconds=older_than_seconds)
    stale = list(session.scalars(select(WorkerProcess.id).where(WorkerProcess.last_seen_at < since)))
    forget_worker_models(session, stale)
    session.execute(delete(WorkerProcess).where(WorkerProcess.id.in_(stale)))
    session.commit()
