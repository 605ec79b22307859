"""Where a queued job stands: its position, and when it is expected to start.

Position is the job's place in the order the scheduler starts jobs in (shared/jobs/scheduling.py: key
priority, owners taking turns, per-key caps), behind the jobs already sent to workers. The expected start
plays the line out on the queue's live workers' slots: each running job frees its slot at its own end (its
ETA, counted down from when it was written; before it has one, its predicted run time from its start), each
queued job ahead takes the first free slot for its own predicted run time (`jobs.estimated_seconds`, from
the measured history: shared/jobs/run_speeds.py). Unknown (null) while no worker serves the queue, or behind
a job whose end nobody can tell (one overdue by more than OVERDUE_SECONDS, or with no prediction).

Computed once per change of the queue for all its queued jobs, not per request: a background pass in each
API process (every SCHEDULE_INTERVAL_SECONDS) recomputes a queue's table when its version changed (or
TABLE_TTL_SECONDS passed, for the running jobs' new ETAs), and a poll reads the table from memory. Starts
are kept as instants, so the seconds count down between passes.
"""

from __future__ import annotations

import heapq
import math
import statistics
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
from shared.jobs.workers import live_workers, served_queues, slots_serving
from shared.settings import Settings

if TYPE_CHECKING:
    from api.state import AppState

TYPICAL_RUNS = 20  # successful runs the typical run time (for jobs with no prediction) is the median of
TABLE_TTL_SECONDS = 10.0  # a queue's table is recomputed at least this often (running jobs' ETAs move)
OVERDUE_SECONDS = 60.0  # past its expected end by more than this, a running job's end is unknown


@dataclass(frozen=True)
class Running:
    eta_seconds: float | None  # remaining seconds when the job last reported progress
    eta_at: datetime | None  # when that was
    started_at: datetime | None
    estimated_seconds: float | None = None  # its predicted run time (jobs.estimated_seconds)


def remaining_seconds(job: Running, typical: float | None, now: datetime) -> float | None:
    """Seconds until a running job ends, counted down from its last ETA (or from its start against its
    predicted run time, else a typical run); None when unknown or overdue by more than OVERDUE_SECONDS."""
    expected = job.estimated_seconds if job.estimated_seconds is not None else typical
    if job.eta_seconds is not None and job.eta_at is not None:
        left = job.eta_seconds - (now - as_utc(job.eta_at)).total_seconds()
    elif expected is not None and job.started_at is not None:
        left = expected - (now - as_utc(job.started_at)).total_seconds()
    else:
        return None
    if left < -OVERDUE_SECONDS:
        return None
    return max(left, 0.0)


def expected_starts(
    slots: int, running_left: list[float | None], durations: list[float | None]
) -> list[float | None]:
    """Seconds from now until each job of the line starts (`durations`: their predicted run times, in line
    order), on `slots` slots that the running jobs free after `running_left` seconds (None: unknown)."""
    if slots <= 0:
        return [None] * len(durations)
    # A worker serving several queues counts in each: the queue can use at most `slots` of them, and the
    # first to free are the ones that end soonest.
    ends = sorted(math.inf if left is None else left for left in running_left)[:slots]
    free = [*ends, *([0.0] * (slots - len(ends)))]
    heapq.heapify(free)
    starts: list[float | None] = []
    for duration in durations:
        at = heapq.heappop(free)
        starts.append(None if math.isinf(at) else round(at, 1))
        heapq.heappush(free, math.inf if duration is None else at + duration)
    return starts


def line_version(session: Session, settings: Settings, queue: str) -> tuple:
    """Changes whenever the line may have: a job joins or leaves it (submitted, canceled, sent, started) or a
    job in flight ends. One aggregate query, so a pass does not recompute an unchanged line."""
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


@dataclass(frozen=True)
class QueueTable:
    computed_at: float  # time.monotonic()
    version: tuple
    places: dict[str, tuple[int, datetime | None]]  # job id -> (jobs ahead, expected start)


class QueueStanding:
    """Each queue's table of queued jobs (place, expected start), recomputed when the queue changed."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings
        self._tables: dict[str, QueueTable] = {}
        self._lock = threading.Lock()  # guards _tables
        self._compute_lock = threading.Lock()  # one recomputation at a time

    # -- the request path ---------------------------------------------------------------------------------
    def cached(self, job_id: str, queue: str | None) -> dict[str, float | int | None] | None:
        """From memory; None when this queue's table does not hold the job yet (submitted since the pass)."""
        table = self._tables.get(queue or self.settings.queue_name)
        place = table.places.get(job_id) if table is not None else None
        return None if place is None else self._answer(place)

    def standing(self, job_id: str, queue: str | None) -> dict[str, float | int | None]:
        """Its place in its own queue (`queue` None: the default one, for jobs made before named queues):
        from the table, recomputing it first when it does not hold the job (a database read, in a thread)."""
        answer = self.cached(job_id, queue)
        if answer is not None:
            return answer
        name = queue or self.settings.queue_name
        with self.sessions() as session:
            table = self._recompute(session, name, force=True)
        place = table.places.get(job_id)
        return self._answer(place if place is not None else (len(table.places), None))

    @staticmethod
    def _answer(place: tuple[int, datetime | None]) -> dict[str, float | int | None]:
        ahead, start = place
        seconds = None if start is None else round(max((start - datetime.now(UTC)).total_seconds(), 0.0), 1)
        return {"queue_position": ahead + 1, "estimated_start_seconds": seconds}

    def forget(self, queue: str | None) -> None:
        """This process changed the queue (a submission, a cancel): its next poll recomputes the table, so
        the caller sees the change at once (other processes' changes show within a pass)."""
        with self._lock:
            self._tables.pop(queue or self.settings.queue_name, None)

    # -- the background pass ------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Every queue with queued jobs: its table recomputed if the queue changed (or it is old); the
        tables of queues with none are dropped."""
        with self.sessions() as session:
            queues = {
                q or self.settings.queue_name
                for q in session.scalars(select(Job.queue).where(Job.status == JobStatus.queued).distinct())
            }
            for name in queues:
                self._recompute(session, name, force=False)
        with self._lock:
            for name in set(self._tables) - queues:
                del self._tables[name]

    def _recompute(self, session: Session, queue: str, *, force: bool) -> QueueTable:
        with self._compute_lock:
            version = line_version(session, self.settings, queue)
            table = self._tables.get(queue)
            fresh = table is not None and time.monotonic() - table.computed_at < TABLE_TTL_SECONDS
            if table is not None and table.version == version and (fresh or force):
                return table  # (forced: the job asked about is simply not in this queue's line)
            table = QueueTable(time.monotonic(), version, self._places(session, queue))
            with self._lock:
                self._tables[queue] = table
            return table

    def _places(self, session: Session, queue: str) -> dict[str, tuple[int, datetime | None]]:
        line = queue_line(session, self.settings, queue)
        predicted: dict[str, float | None] = {}
        if line:
            rows = session.execute(select(Job.id, Job.estimated_seconds).where(Job.id.in_(line)))
            predicted = {job_id: seconds for job_id, seconds in rows}
        typical = typical_run(session)
        slots = slots_serving(live_workers(session, self.settings), queue)
        now = datetime.now(UTC)
        running = [
            remaining_seconds(Running(*row), typical, now)
            for row in session.execute(
                select(Job.eta_seconds, Job.eta_at, Job.started_at, Job.estimated_seconds).where(
                    Job.status.in_(list(RUNNING)), in_queue(self.settings, queue)
                )
            )
        ]
        durations = [predicted.get(job_id) or typical for job_id in line]
        starts = expected_starts(slots, running, durations)
        return {
            job_id: (ahead, None if start is None else now + timedelta(seconds=start))
            for ahead, (job_id, start) in enumerate(zip(line, starts, strict=True))
        }


def typical_run(session: Session) -> float | None:
    """The median wall time of the last successful runs: for a job queued before predictions existed."""
    rows = session.execute(
        select(Job.started_at, Job.finished_at)
        .where(Job.status == JobStatus.succeeded, Job.started_at.is_not(None), Job.finished_at.is_not(None))
        .order_by(Job.finished_at.desc())
        .limit(TYPICAL_RUNS)
    ).all()
    runs = [(as_utc(end) - as_utc(start)).total_seconds() for start, end in rows]
    return statistics.median(runs) if runs else None


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
