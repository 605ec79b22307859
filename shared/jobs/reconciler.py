"""The reconciler: repairs what the broker cannot, from the database, which is the truth.

Each pass (every `reconcile_interval_seconds`, in every API and worker process; a lock in the database lets
one act at a time):
- a running job whose lease ran out lost its worker (killed, out of memory, host gone): it goes back to the
  queue and resumes from its resume state; one that lost its worker `max_attempts` times fails
  (`too_many_attempts`); one whose cancel was asked for is canceled;
- a queued job whose message the broker no longer holds (Redis lost its data) is sent again (sending the
  jobs that wait for a worker is the scheduler's: shared/jobs/scheduler.py);
- uploads (POST /v1/uploads) past their expiry are deleted, used or not, with their objects, and so are
  idempotency keys past theirs (shared/idempotency.py).
Sending twice is harmless: claiming is atomic and a live lease makes a duplicate do nothing.

After this process loses the database, leases are left alone until it has seen the database up for a full
lease length, so workers that lived through the same outage get the chance to renew theirs first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.broker_inspect import jobs_in_broker
from shared.datasets.direct_uploads import expire_uploads
from shared.db.models import Job, JobStatus, utcnow
from shared.db.service_lock import try_lock
from shared.idempotency import expire_idempotency_keys
from shared.jobs.leases import back_to_queue, end_if_it_must_not_run, held_by
from shared.jobs.state import RUNNING
from shared.outages import is_outage
from shared.queue import JobDispatcher
from shared.settings import Settings
from shared.storage import ObjectStore, resume_state_prefix
from shared.usage.storage import forget_resume_state

log = logging.getLogger("lorabake.reconciler")
LOCK_NAME = "reconciler"


@dataclass
class ReconcileReport:
    requeued: list[str] = field(default_factory=list)  # lease ran out: back in the queue
    ended: list[str] = field(default_factory=list)  # lease ran out: canceled, or too many attempts
    sent: list[str] = field(default_factory=list)  # (re)sent to the broker
    expired_uploads: list[str] = field(default_factory=list)  # deleted with their objects
    expired_idempotency_keys: int = 0  # answers out of their replay window, lapsed claims
    skipped: str | None = None  # why nothing was done this pass


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        dispatcher: JobDispatcher,
        store: ObjectStore | None = None,
        holder: str = "",
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.dispatcher = dispatcher
        self.store = store
        self.holder = holder
        self._database_up_since: float | None = None

    # -- one pass ---------------------------------------------------------------------------------------
    def run_once(self) -> ReconcileReport:
        try:
            report = self._pass()
        except Exception as exc:
            if is_outage(exc):
                if self._database_up_since is not None:  # said once per outage
                    log.warning("reconciler: database unavailable (%s); trying each pass", type(exc).__name__)
                self._database_up_since = None
                return ReconcileReport(skipped="database unavailable")
            raise
        return report

    def _pass(self) -> ReconcileReport:
        interval = self.settings.reconcile_interval_seconds or 15.0
        with self.sessions() as session:
            if not try_lock(session, LOCK_NAME, self.holder, ttl_seconds=3 * interval):
                return ReconcileReport(skipped="another process holds the reconciler lock")
        now = time.monotonic()
        if self._database_up_since is None:
            self._database_up_since = now
        report = ReconcileReport()
        if now - self._database_up_since >= self.settings.lease_seconds:
            self.take_back_expired(report)
        self.send_lost(report)
        self.expire_uploads(report)
        report.expired_idempotency_keys = expire_idempotency_keys(self.sessions)
        return report

    # -- uploads nobody used in time --------------------------------------------------------------------
    def expire_uploads(self, report: ReconcileReport) -> None:
        if self.store is not None:
            report.expired_uploads.extend(expire_uploads(self.sessions, self.store))

    # -- leases that ran out ----------------------------------------------------------------------------
    def take_back_expired(self, report: ReconcileReport) -> None:
        now = utcnow()
        running = [s.value for s in RUNNING]
        with self.sessions() as session:
            expired = list(
                session.scalars(
                    select(Job.id).where(
                        Job.status.in_(running),
                        or_(Job.lease_token.is_(None), Job.lease_expires_at <= now),
                    )
                )
            )
        for job_id in expired:
            self._take_back(job_id, report, reason="worker_lost")

    def take_back_interrupted(self) -> ReconcileReport:
        """Every running job, whatever its lease says: for a start-up where no worker can be running yet
        (the embedded `lorabake serve`). Not counted as an attempt: the service was stopped, not the job."""
        report = ReconcileReport()
        with self.sessions() as session:
            running = [s.value for s in RUNNING]
            job_ids = list(session.scalars(select(Job.id).where(Job.status.in_(running))))
        for job_id in job_ids:
            self._take_back(job_id, report, reason="interrupted", force=True)
        self.send_lost(report)
        return report

    def _take_back(self, job_id: str, report: ReconcileReport, *, reason: str, force: bool = False) -> None:
        now = utcnow()
        with self.sessions() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None or JobStatus(job.status) not in RUNNING:
                return
            still_expired = or_(Job.lease_expires_at.is_(None), Job.lease_expires_at <= now)
            revoked = session.execute(
                update(Job)
                .execution_options(synchronize_session=False)  # rows are re-read, not patched
                .where(held_by(job.id, job.lease_token), *(() if force else (still_expired,)))
                .values(lease_token=None, lease_expires_at=None)
            )
            if revoked.rowcount != 1:  # renewed (or taken) since we looked: the worker is alive
                session.rollback()
                return
            session.refresh(job)
            ended = end_if_it_must_not_run(session, job, None if force else self.settings.max_attempts)
            if not ended:
                back_to_queue(session, job, reason, count_attempt=not force)
            session.commit()
        if ended:
            report.ended.append(job_id)
            self._drop_resume_state(job_id)
            log.warning("job %s: its worker is gone and the job ended (%s)", job_id, job.status)
        else:
            report.requeued.append(job_id)
            log.warning("job %s: its lease ran out (%s); queued again, it resumes", job_id, reason)

    def _drop_resume_state(self, job_id: str) -> None:
        if self.store is None:
            return
        try:
            self.store.delete_prefix(resume_state_prefix(job_id))
            forget_resume_state(self.sessions, job_id)
        except Exception:
            log.exception("job %s: could not delete its resume state", job_id)

    # -- messages the broker lost -----------------------------------------------------------------------
    def send_lost(self, report: ReconcileReport) -> None:
        """Sent jobs no worker took within `requeue_after_seconds` and the broker no longer holds."""
        now = utcnow()
        grace = timedelta(seconds=self.settings.requeue_after_seconds)
        with self.sessions() as session:
            overdue = session.execute(
                select(Job.id, Job.queue)
                .where(
                    Job.status == JobStatus.queued,
                    Job.lease_token.is_(None),
                    Job.cancel_requested.is_(False),
                    Job.enqueued_at.is_not(None),
                    Job.enqueued_at <= now - grace,
                )
                .order_by(Job.created_at)
            ).all()
        if not overdue:
            return
        queue_of = {job_id: queue or self.settings.queue_name for job_id, queue in overdue}
        try:
            present = jobs_in_broker(
                self.settings, stale_after=self.settings.requeue_after_seconds, queues=set(queue_of.values())
            )
        except Exception as exc:  # the broker is down: nothing can be sent now anyway
            log.warning("reconciler: cannot read the broker (%s: %s)", type(exc).__name__, exc)
            return
        if present is None:
            return
        for job_id in [job_id for job_id in queue_of if job_id not in present]:
            if not self.dispatcher.send(job_id, queue_of[job_id]):
                break  # the broker is down; the rest wait for the next pass
            report.sent.append(job_id)
            log.warning("job %s: the broker lost its message; sent again", job_id)
        if report.sent:
            with self.sessions() as session:
                session.execute(
                    update(Job)
                    .execution_options(synchronize_session=False)  # rows are re-read, not patched
                    .where(Job.id.in_(report.sent), Job.status == JobStatus.queued)
                    .values(enqueued_at=now)
                )
                session.commit()
