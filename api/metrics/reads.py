"""The database reads behind /metrics: a few aggregate queries, run at scrape time.

Durations are bucketed by the database (one row per histogram), so a scrape costs the same however many
jobs the window holds. Every query is bounded (STATEMENT_TIMEOUT_MS on Postgres, else the session's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import ColumnElement, Select, case, func, select, text
from sqlalchemy.orm import InstrumentedAttribute, Session

from shared.db.models import Job, JobStatus, utcnow
from shared.jobs.workers import workers_alive

# Time queued / running, over the jobs that started / finished in the last WINDOW (see collectors.py).
WINDOW = timedelta(hours=24)
QUEUED_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 3 * 3600.0, 6 * 3600.0, 86400.0)
RUNNING_BUCKETS = (
    30.0,
    60.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    2 * 3600.0,
    4 * 3600.0,
    8 * 3600.0,
    12 * 3600.0,
    86400.0,
)
# Well below a scraper's usual 10 s timeout; the service's own statement timeout is a minute.
STATEMENT_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class Durations:
    """One histogram: cumulative counts per upper bound (the last is +Inf), and the sum of the values."""

    buckets: list[tuple[float, int]]
    total: float
    count: int

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Durations:
        return cls([*((bound, 0) for bound in bounds), (float("inf"), 0)], 0.0, 0)


@dataclass(frozen=True)
class DatabaseReadings:
    jobs_by_status: dict[str, int]
    workers_alive: int
    queued: Durations
    running_by_status: dict[str, Durations]
    steps_per_second: dict[str, float]  # job id -> rate, jobs in training only
    queued_by_queue: dict[str, int] = field(default_factory=dict)  # queue name -> jobs waiting to start


def bound_statements(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))


def seconds_between(session: Session, start: ColumnElement, end: ColumnElement) -> ColumnElement[float]:
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0  # SQLite


def _bucket_columns(seconds: ColumnElement[float], bounds: tuple[float, ...]) -> list[ColumnElement]:
    return [
        func.count(),
        func.coalesce(func.sum(seconds), 0.0),
        *(func.coalesce(func.sum(case((seconds <= bound, 1), else_=0)), 0) for bound in bounds),
    ]


def _durations(row: tuple, bounds: tuple[float, ...]) -> Durations:
    count, total, *within = row
    buckets = [(bound, int(n)) for bound, n in zip(bounds, within, strict=True)]
    return Durations([*buckets, (float("inf"), int(count))], float(total), int(count))


def _histogram_query(
    session: Session,
    start: InstrumentedAttribute,
    end: InstrumentedAttribute,
    window_on: InstrumentedAttribute,
    bounds: tuple[float, ...],
) -> Select:
    seconds = seconds_between(session, start, end)
    since = utcnow() - WINDOW
    return select(*_bucket_columns(seconds, bounds)).where(
        start.is_not(None), end.is_not(None), window_on >= since
    )


def read_database(session: Session, *, heartbeat_within: float, default_queue: str = "") -> DatabaseReadings:
    bound_statements(session)
    by_status = {status.value: 0 for status in JobStatus}
    by_status.update(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())

    queued_row = session.execute(
        _histogram_query(session, Job.created_at, Job.started_at, Job.started_at, QUEUED_BUCKETS)
    ).one()
    running_query = _histogram_query(
        session, Job.started_at, Job.finished_at, Job.finished_at, RUNNING_BUCKETS
    )
    running: dict[str, Durations] = {}
    for *values, status in session.execute(running_query.add_columns(Job.status).group_by(Job.status)):
        running[status] = _durations(tuple(values), RUNNING_BUCKETS)
    rates = session.execute(
        select(Job.id, Job.steps_per_second).where(
            Job.status == JobStatus.training, Job.steps_per_second.is_not(None)
        )
    ).all()
    queued_by_queue: dict[str, int] = {}
    waiting = select(Job.queue, func.count()).where(Job.status == JobStatus.queued).group_by(Job.queue)
    for queue, count in session.execute(waiting):  # jobs made before named queues are the default one's
        name = queue or default_queue
        queued_by_queue[name] = queued_by_queue.get(name, 0) + count
    return DatabaseReadings(
        queued_by_queue=queued_by_queue,
        jobs_by_status=by_status,
        workers_alive=workers_alive(session, within_seconds=heartbeat_within),
        queued=_durations(tuple(queued_row), QUEUED_BUCKETS),
        running_by_status=running,
        steps_per_second={job_id: float(rate) for job_id, rate in rates},
    )
