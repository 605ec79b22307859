"""Worker heartbeats: each worker process says it is alive, so readiness and queue views can count them."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from shared.catalogue.records import forget_worker_models
from shared.db.models import WorkerProcess, utcnow
from shared.gpu_inventory import Gpu
from shared.settings import Settings


def worker_id(pid: int | None = None) -> str:
    """host:pid of this process (or of `pid` on this host)."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


@dataclass(frozen=True)
class LiveWorker:
    queues: frozenset[str]  # the queues it consumes
    slots: int  # jobs it runs at once (its Celery concurrency)
    gpus: tuple[tuple[str, int], ...] = ()  # (name, memory MiB) of each card it reported


def record_heartbeat(
    session: Session, wid: str, queues: str, slots: int = 1, gpus: list[Gpu] | None = None
) -> None:
    now = utcnow()
    gpus = list(gpus or [])
    row = session.get(WorkerProcess, wid)
    if row is None:
        session.add(
            WorkerProcess(
                id=wid,
                hostname=wid.rsplit(":", 1)[0],
                queues=queues,
                slots=slots,
                gpus=gpus,
                started_at=now,
                last_seen_at=now,
            )
        )
    else:
        row.last_seen_at, row.queues, row.slots, row.gpus = now, queues, slots, gpus
    session.commit()


def live_workers(session: Session, settings: Settings) -> list[LiveWorker]:
    """Workers whose heartbeat is recent (three beats), with the queues they consume."""
    since = utcnow() - timedelta(seconds=3 * settings.lease_renew_seconds)
    rows = session.execute(
        select(WorkerProcess.queues, WorkerProcess.slots, WorkerProcess.gpus).where(
            WorkerProcess.last_seen_at >= since
        )
    ).all()
    return [
        LiveWorker(
            frozenset(filter(None, names.split(","))),
            max(1, slots or 1),
            tuple((str(g.get("name", "")), int(g.get("memory_mb", 0))) for g in gpus or []),
        )
        for names, slots, gpus in rows
    ]


def served_queue_lists(session: Session, settings: Settings) -> list[set[str]]:
    """The queues each live worker consumes, from their heartbeats."""
    return [set(worker.queues) for worker in live_workers(session, settings)]


def served_queues(session: Session, settings: Settings) -> set[str]:
    return {q for served in served_queue_lists(session, settings) for q in served}


def slots_serving(workers: list[LiveWorker], queue: str) -> int:
    """Jobs the live workers of `queue` can run at once. A worker that consumes several queues counts in each:
    the scheduler may then send one more job than it can start at once, and that job waits in the broker."""
    return sum(worker.slots for worker in workers if queue in worker.queues)


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
