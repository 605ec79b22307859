"""Where a queued job stands: its position, and a rough estimate of when it starts.

Position counts the jobs queued before it (the broker hands jobs out first in, first out). The estimate
assumes each worker takes one job at a time: a free worker starts it now; otherwise each running job's
end (its own ETA) starts the next job in line, and past those, each round of workers takes a typical run
(the median of the last successful runs). Unknown (null) while no worker is alive, or when it depends on
a typical run and nothing has run yet.
"""

from __future__ import annotations

import statistics
import threading
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.config.spec import TrainingConfig
from shared.db.models import BaseModelRecord, Job, JobStatus, WorkerProcess, as_utc, utcnow
from shared.jobs.routing import queue_for
from shared.jobs.state import RUNNING
from shared.settings import Settings

if TYPE_CHECKING:
    from api.state import AppState

TYPICAL_RUNS = 20  # successful runs the typical run time is the median of
TYPICAL_TTL_SECONDS = 30.0
CAPACITY_TTL_SECONDS = 2.0


class QueueStanding:
    """Positions are counted at each poll; the rest of the estimate (the queue's live workers, its running
    jobs' ETAs, the typical run) is kept a moment, so polling a queued job stays cheap."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings
        self._typical: tuple[float, float | None] = (-TYPICAL_TTL_SECONDS, None)  # (computed at, seconds)
        self._capacity: dict[str, tuple[float, int, list[float | None]]] = {}  # queue -> (at, workers, etas)
        self._lock = threading.Lock()

    def _typical_run(self, session: Session) -> float | None:
        with self._lock:
            at, value = self._typical
        if time.monotonic() - at < TYPICAL_TTL_SECONDS:
            return value
        rows = session.execute(
            select(Job.started_at, Job.finished_at)
            .where(
                Job.status == JobStatus.succeeded, Job.started_at.is_not(None), Job.finished_at.is_not(None)
            )
            .order_by(Job.finished_at.desc())
            .limit(TYPICAL_RUNS)
        ).all()
        runs = [(as_utc(end) - as_utc(start)).total_seconds() for start, end in rows]
        value = statistics.median(runs) if runs else None
        with self._lock:
            self._typical = (time.monotonic(), value)
        return value

    def _queue_capacity(self, session: Session, queue: str | None) -> tuple[int, list[float | None]]:
        """(live workers serving the queue, ETAs of the jobs running from it)."""
        name = queue or self.settings.queue_name
        with self._lock:
            cached = self._capacity.get(name)
        if cached is not None and time.monotonic() - cached[0] < CAPACITY_TTL_SECONDS:
            return cached[1], cached[2]
        workers = sum(1 for served in served_queue_lists(session, self.settings) if name in served)
        in_queue = Job.queue.in_([name]) if queue is not None else Job.queue.is_(None) | (Job.queue == name)
        etas = list(session.scalars(select(Job.eta_seconds).where(Job.status.in_(list(RUNNING)), in_queue)))
        with self._lock:
            self._capacity[name] = (time.monotonic(), workers, etas)
        return workers, etas

    def standing(self, created_at: datetime, queue: str | None) -> dict[str, float | int | None]:
        """Its place in its own queue (`queue` None: the default one, for jobs made before named queues)."""
        with self.sessions() as session:
            same_queue = Job.queue.is_(None) if queue is None else Job.queue == queue
            ahead = (
                session.scalar(
                    select(func.count(Job.id)).where(
                        Job.status == JobStatus.queued, Job.created_at < created_at, same_queue
                    )
                )
                or 0
            )
            workers, running = self._queue_capacity(session, queue)
            typical = self._typical_run(session)
        # a job that has no ETA yet (still preparing) is taken to need a typical run
        etas = [eta if eta is not None else typical for eta in running]
        known = [eta for eta in etas if eta is not None]
        if len(known) < len(etas):  # no typical run to stand in for a missing ETA: only a free worker is sure
            starts = 0.0 if ahead < max(0, workers - len(etas)) else None
        else:
            starts = estimate(ahead, workers, known, typical)
        return {"queue_position": ahead + 1, "estimated_start_seconds": starts}


def estimate(ahead: int, workers: int, running_etas: list[float], typical: float | None) -> float | None:
    """Seconds until the job behind `ahead` others starts (see the module doc); None when unknown."""
    if workers <= 0:
        return None
    free = max(0, workers - len(running_etas))
    if ahead < free:
        return 0.0
    waiting_for = ahead - free  # this many more starts come first, one as each running job ends
    ends = sorted(running_etas)
    if waiting_for < len(ends):
        return round(ends[waiting_for], 1)
    if typical is None:
        return None
    later_rounds = (waiting_for - len(ends)) // workers + 1
    return round((ends[-1] if ends else 0.0) + later_rounds * typical, 1)


def job_queue(state: AppState, config: TrainingConfig, requested: str | None) -> str:
    """The named queue a job goes to (shared/jobs/routing.py): asked for, else by its model's family."""
    with state.sessions() as session:
        family = config.model_family if config.model_family != "auto" else None
        if family is None:
            family = session.scalar(
                select(BaseModelRecord.family).where(BaseModelRecord.name == config.base_model)
            )
        return queue_for(state.settings, family, requested, served_queues(session, state.settings))


def served_queue_lists(session: Session, settings: Settings) -> list[set[str]]:
    """The queues each live worker consumes, from their heartbeats."""
    since = utcnow() - timedelta(seconds=3 * settings.lease_renew_seconds)
    rows = session.scalars(select(WorkerProcess.queues).where(WorkerProcess.last_seen_at >= since))
    return [{q for q in row.split(",") if q} for row in rows]


def served_queues(session: Session, settings: Settings) -> set[str]:
    return {q for served in served_queue_lists(session, settings) for q in served}
