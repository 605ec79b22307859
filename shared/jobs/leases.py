"""Job leases: which worker runs a job, for how long, and the fence on everything it writes.

A worker claims a job by taking its lease (a fresh token, its worker id, an expiry) in one compare-and-set
UPDATE, so of two deliveries of the same job only one wins, on Postgres and SQLite alike. It renews the lease
while it works; every write it makes for the job opens with an UPDATE that names its token (`JobLease.
transaction`), so once the lease moved on (the reconciler presumed the worker dead and queued the job
again) the old worker's writes fail with LeaseLost and it stops. Times are the hosts' UTC clocks: keep them
in sync (NTP); a skew below `lease_seconds - lease_renew_seconds` is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, or_, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Job, JobStatus, as_utc, new_id, utcnow
from shared.jobs.run_speeds import record_run
from shared.jobs.state import add_event, set_status

log = logging.getLogger("lorabake.leases")


class LeaseLost(Exception):  # noqa: N818 - it is the condition's name
    """This worker's lease on the job is gone (it ran out and the job moved on, or the job ended)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id}: this worker no longer holds its lease")
        self.job_id = job_id


def lease_is_free(job: Job, now: datetime) -> bool:
    return job.lease_token is None or job.lease_expires_at is None or as_utc(job.lease_expires_at) <= now


def held_by(job_id: str, token: str | None) -> ColumnElement[bool]:
    token_matches = Job.lease_token.is_(None) if token is None else Job.lease_token == token
    return (Job.id == job_id) & token_matches


def take_lease(session: Session, job: Job, now: datetime, duration: timedelta, worker: str) -> str | None:
    """Compare-and-set: the lease becomes ours if it is still the one we read and has run out. Returns the
    new token, or None when another process changed it first. Refreshes `job`."""
    free = or_(Job.lease_expires_at.is_(None), Job.lease_expires_at <= now)
    token = new_id()
    taken = session.execute(
        update(Job)
        .execution_options(synchronize_session=False)  # rows are re-read, not patched
        .where(held_by(job.id, job.lease_token), free)
        .values(lease_token=token, lease_expires_at=now + duration, worker=worker)
    )
    if taken.rowcount != 1:
        session.rollback()
        return None
    session.refresh(job)
    return token


@dataclass(frozen=True)
class Claim:
    job: Job  # detached copy of the row as claimed
    token: str


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim | None  # None: nothing to run (see `ended`)
    ended: bool = False  # the claim itself ended the job (canceled, too many attempts): drop its resume state


def claim_job(
    sessions: sessionmaker[Session], job_id: str, worker: str, *, lease_seconds: float, max_attempts: int
) -> ClaimResult:
    """Take the job's lease and mark it `preparing`, unless there is nothing (more) to do for it: it is
    unknown or finished, another worker's lease on it is live (a duplicate delivery), it was canceled, or it
    lost its worker `max_attempts` times already."""
    with sessions() as session:
        job = session.get(Job, job_id, with_for_update=True)  # Postgres: waits for a concurrent claim
        if job is None:
            log.warning("job %s does not exist; dropping the message", job_id)
            return ClaimResult(None)
        if JobStatus(job.status).is_terminal:
            log.info("job %s is already %s; nothing to do", job_id, job.status)
            return ClaimResult(None)
        now = utcnow()
        if not lease_is_free(job, now):
            log.info(
                "job %s is held by %s until %s; this delivery does nothing",
                job_id,
                job.worker,
                job.lease_expires_at,
            )
            return ClaimResult(None)
        token = take_lease(session, job, now, timedelta(seconds=lease_seconds), worker)
        if token is None:
            log.info("job %s was claimed by another worker first", job_id)
            return ClaimResult(None)
        if end_if_it_must_not_run(session, job, max_attempts):
            session.commit()
            return ClaimResult(None, ended=True)
        job.attempts += 1
        job.started_at = job.started_at or now
        set_status(session, job, JobStatus.preparing)
        session.commit()
        session.expunge(job)
        return ClaimResult(Claim(job, token))


def end_if_it_must_not_run(session: Session, job: Job, max_attempts: int | None) -> bool:
    """For a job whose lease was just taken (by a claim, or by the reconciler from a dead worker): ends it,
    and says so, when it must not run again: its cancel was asked for, or it lost its worker `max_attempts`
    times (None: not counted)."""
    if job.cancel_requested:
        end_job(session, job, JobStatus.canceled)
        return True
    if max_attempts is not None and job.lost_runs >= max_attempts:
        message = (
            f"the job's worker stopped {job.lost_runs} times while running it (killed, out of memory, or its "
            "host was lost); it is not started again"
        )
        end_job(session, job, JobStatus.failed, error_code="too_many_attempts", error_message=message)
        return True
    return False


def end_job(
    session: Session, job: Job, status: JobStatus, *, gpu_model: str | None = None, **fields: Any
) -> None:
    """A terminal status, the lease given up with it. A success on a worker that names its GPU model leaves
    the run's measured speed for the estimates (shared/jobs/run_speeds.py)."""
    set_status(session, job, status, lease_token=None, lease_expires_at=None, **fields)
    if status == JobStatus.succeeded and gpu_model is not None:
        record_run(session, job, gpu_model)


def back_to_queue(session: Session, job: Job, reason: str, *, count_attempt: bool) -> None:
    """Queued again with no lease and no pending message (`enqueued_at` NULL: the reconciler sends it at
    once); the next run resumes from the job's resume state. `count_attempt=False` when the worker handed
    the job back itself (an outage, a shutdown): that run does not count towards max_attempts."""
    if not count_attempt:
        job.handed_back += 1
    job.status = JobStatus.queued
    job.lease_token = job.lease_expires_at = job.enqueued_at = None
    add_event(session, job.id, "status", {"status": JobStatus.queued.value, "reason": reason})


class JobLease:
    """A worker's hold on one job: renewals, and the fenced transactions all its writes go through."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, token: str, lease_seconds: float):
        self.sessions = sessions
        self.job_id = job_id
        self.token = token
        self.duration = timedelta(seconds=lease_seconds)
        self.cancel_requested = False  # as of the last fenced write
        self.gpu_model: str | None = None  # set by the worker: a success records the run's speed with it

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose first statement renews the lease (and locks the row until commit); raises
        LeaseLost, having written nothing, when the token is no longer the job's."""
        with self.sessions() as session:
            row = session.execute(
                update(Job)
                .execution_options(synchronize_session=False)  # rows are re-read, not patched
                .where(held_by(self.job_id, self.token))
                .values(lease_expires_at=utcnow() + self.duration)
                .returning(Job.cancel_requested)
            ).first()
            if row is None:
                session.rollback()
                raise LeaseLost(self.job_id)
            self.cancel_requested = bool(row[0])
            yield session
            session.commit()

    def renew(self) -> None:
        with self.transaction():
            pass

    def job(self, session: Session) -> Job:
        job = session.get(Job, self.job_id)
        if job is None:  # deleted under us (it cannot be while we hold the lease, but say so clearly)
            raise LeaseLost(self.job_id)
        return job

    def finish(self, status: JobStatus, **fields: Any) -> None:
        with self.transaction() as session:
            end_job(session, self.job(session), status, gpu_model=self.gpu_model, **fields)

    def hand_back(self, reason: str) -> None:
        """Give the job back to the queue (not counted as an attempt): an outage outlasted our retries."""
        with self.transaction() as session:
            back_to_queue(session, self.job(session), reason, count_attempt=False)
