"""Where a queued job stands: its position, and a rough estimate of when it starts.

Position is the job's place in the order the scheduler starts jobs in (shared/jobs/scheduling.py: key
priority, owners taking turns, per-key caps), behind the jobs already sent to workers. The estimate
assumes each worker takes one job at a time: a free worker starts it now; otherwise each running job's
end (its own ETA) starts the next job in line, and past those, each round of workers takes a typical run
(the median of the last successful runs). A running job's remaining time counts down from when its ETA was
written (or, before it has one, from its start against a typical run), so the estimate moves with time even
between progress reports. Unknown (null, not shown) while no worker is alive, when it depends on a typical
run and nothing has run yet, or when a job ahead has overrun what was expected of it by more than
OVERDUE_SECONDS (a stalled job says nothing about when it ends).
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from shared.config.spec import TrainingConfig
from shared.db.models import ApiKey, BaseModelRecord, Job, JobStatus, as_utc
from shared.jobs.routing import queue_for
from shared.jobs.scheduler import (
    Flight,
    count_in_flight,
    in_flight,
    in_queue,
    key_rules,
    last_turns,
    waiting_to_be_sent,
)
from shared.jobs.scheduling import Waiting, start_order
from shared.jobs.state import RUNNING
from shared.jobs.workers import served_queue_lists, served_queues
from shared.settings import Settings

if TYPE_CHECKING:
    from api.state import AppState

TYPICAL_RUNS = 20  # successful runs the typical run time is the median of
TYPICAL_TTL_SECONDS = 30.0
CAPACITY_TTL_SECONDS = 2.0
LINE_TTL_SECONDS = 30.0  # at most this stale when only a key's limits changed
OVERDUE_SECONDS = 60.0  # past its expected end by more than this, a running job's end is unknown


@dataclass(frozen=True)
class Running:
    eta_seconds: float | None  # remaining seconds when the job last reported progress
    eta_at: datetime | None  # when that was
    started_at: datetime | None


def remaining_seconds(job: Running, typical: float | None, now: datetime) -> float | None:
    """Seconds until a running job ends, counted down from its last ETA (or from its start against a
    typical run); None when unknown or overdue by more than OVERDUE_SECONDS."""
    if job.eta_seconds is not None and job.eta_at is not None:
        left = job.eta_seconds - (now - as_utc(job.eta_at)).total_seconds()
    elif typical is not None and job.started_at is not None:
        left = typical - (now - as_utc(job.started_at)).total_seconds()
    else:
        return None
    if left < -OVERDUE_SECONDS:
        return None
    return max(left, 0.0)


def line_version(session: Session, settings: Settings, queue: str) -> tuple:
    """Changes whenever the line may have: a job joins or leaves it (submitted, canceled, sent, started) or a
    job in flight ends. One aggregate query, so a poll does not recompute the whole line."""
    of_queue = in_queue(settings, queue)
    is_queued = Job.status == JobStatus.queued
    row = session.execute(
        select(
            func.sum(case((is_queued, 1), else_=0)),
            func.max(case((is_queued, Job.updated_at), else_=None)),
            func.sum(case((in_flight(), 1), else_=0)),
        ).where(of_queue, or_(is_queued, in_flight()))
    ).one()
    return tuple(row)


def queue_line(session: Session, settings: Settings, queue: str) -> list[str]:
    """The ids of the queue's queued jobs in the order they start: those sent to a worker first (the broker
    hands them out in turn), then the waiting ones in the scheduler's order."""
    of_queue = in_queue(settings, queue)
    sent = list(
        session.scalars(
            select(Job.id)
            .where(Job.status == JobStatus.queued, Job.enqueued_at.is_not(None), of_queue)
            .order_by(Job.enqueued_at, Job.created_at)
        )
    )
    rows = session.execute(
        select(Job.id, Job.owner, Job.api_key_id, Job.created_at, ApiKey.limits)
        .outerjoin(ApiKey, ApiKey.id == Job.api_key_id)
        .where(waiting_to_be_sent(), of_queue)
    ).all()
    waiting = [
        Waiting(job_id, owner, key, created_at, *key_rules(limits))
        for job_id, owner, key, created_at, limits in rows
    ]
    flights = [
        Flight(q or settings.queue_name, owner, key)
        for q, owner, key in session.execute(select(Job.queue, Job.owner, Job.api_key_id).where(in_flight()))
    ]
    turns = last_turns(session, settings, queue, {job.owner for job in waiting})
    return sent + [job.job_id for job in start_order(waiting, count_in_flight(flights, queue, turns))]


class QueueStanding:
    """Positions are counted at each poll; the rest of the estimate (the queue's live workers, its running
    jobs' ETAs, the typical run) is kept a moment, so polling a queued job stays cheap."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings
        self._typical: tuple[float, float | None] = (-TYPICAL_TTL_SECONDS, None)  # (computed at, seconds)
        self._capacity: dict[str, tuple[float, int, list[Running]]] = {}  # queue -> (at, workers, running)
        # queue -> (computed at, line_version, job id -> place)
        self._lines: dict[str, tuple[float, tuple, dict[str, int]]] = {}
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

    def _queue_capacity(self, session: Session, queue: str | None) -> tuple[int, list[Running]]:
        """(live workers serving the queue, the jobs running from it)."""
        name = queue or self.settings.queue_name
        with self._lock:
            cached = self._capacity.get(name)
        if cached is not None and time.monotonic() - cached[0] < CAPACITY_TTL_SECONDS:
            return cached[1], cached[2]
        workers = sum(1 for served in served_queue_lists(session, self.settings) if name in served)
        in_queue = Job.queue.in_([name]) if queue is not None else Job.queue.is_(None) | (Job.queue == name)
        rows = session.execute(
            select(Job.eta_seconds, Job.eta_at, Job.started_at).where(Job.status.in_(list(RUNNING)), in_queue)
        ).all()
        running = [Running(eta, at, started) for eta, at, started in rows]
        with self._lock:
            self._capacity[name] = (time.monotonic(), workers, running)
        return workers, running

    def _place(self, session: Session, job_id: str, queue: str) -> int:
        """Jobs ahead of this one. The line is recomputed only when its version changed (or it is old)."""
        version = line_version(session, self.settings, queue)
        with self._lock:
            cached = self._lines.get(queue)
        if cached is None or cached[1] != version or time.monotonic() - cached[0] >= LINE_TTL_SECONDS:
            line = {jid: place for place, jid in enumerate(queue_line(session, self.settings, queue))}
            cached = (time.monotonic(), version, line)
            with self._lock:
                self._lines[queue] = cached
        return cached[2].get(job_id, len(cached[2]))

    def standing(self, job_id: str, queue: str | None) -> dict[str, float | int | None]:
        """Its place in its own queue (`queue` None: the default one, for jobs made before named queues)."""
        with self.sessions() as session:
            ahead = self._place(session, job_id, queue or self.settings.queue_name)
            workers, running = self._queue_capacity(session, queue)
            typical = self._typical_run(session)
        # a job that has no ETA yet (still preparing) is taken to need a typical run from its start
        now = datetime.now(UTC)
        etas = [remaining_seconds(job, typical, now) for job in running]
        known = [eta for eta in etas if eta is not None]
        if len(known) < len(etas):  # a job ahead whose end is unknown: only a free worker is sure
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


def base_model_queue(state: AppState, base_model: str, family: str | None, requested: str | None) -> str:
    """The named queue of a job that runs a base model without training it (a generation, a comparison):
    routed as job_queue routes a training job, by `family` (given, else the catalogue's for `base_model`)."""
    with state.sessions() as session:
        if family is None:
            family = session.scalar(select(BaseModelRecord.family).where(BaseModelRecord.name == base_model))
        return queue_for(state.settings, family, requested, served_queues(session, state.settings))
