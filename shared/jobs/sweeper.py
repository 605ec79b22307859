"""The retention sweeper: deletes what finished jobs and unused datasets keep in storage once their retention
has run out (shared/jobs/retention.py), and marks the rows; the rows themselves stay.

Each pass (every `retention_sweep_seconds`, in every API and worker-duties process; a lock in the database
lets one act at a time):
- a finished job past its `expires_at` (or, from before retention, past the deployment's current
  `retention_days`) loses its objects: its files and samples, its resume state, its dataset copy and caption
  snapshot (everything under `jobs/{id}/`); then, in one transaction, the job and its artifacts get
  `expired_at` and the job a `expired` event (webhooks: `job.expired`). A job that an unfinished job reads
  (a comparison of it, a generation with its LoRA, a continuation) waits for the next pass;
- a stored dataset that no live job uses (each of its jobs expired, and the last finished more than
  `retention_days` ago) and that nobody changed for as long loses its zip and thumbnails, and gets
  `expired_at`.

Objects are deleted before their rows are marked, so a row marked expired never names an object that is
still stored (storage usage counts the unmarked rows); deleting again is harmless, so a pass cut off by a
storage outage leaves its job unmarked and the next pass finishes it. Downloads answer 410 from the expiry
date on, so the objects that go first are never offered meanwhile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, exists, or_, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from shared.db.models import Artifact, Dataset, Job, JobStatus, as_utc, utcnow
from shared.db.service_lock import try_lock
from shared.jobs.retention import jobs_read_by_live_jobs
from shared.jobs.state import add_event
from shared.outages import is_outage
from shared.periodic import PeriodicThread
from shared.settings import Settings
from shared.storage import ObjectStore, resume_state_prefix

log = logging.getLogger("lorabake.retention")
LOCK_NAME = "retention"
# A comparison or generation checks its source job's expiry, then commits its own row; the sweeper leaves
# a job this long past its date, so one checked just before the date is seen running (and waited for).
GRACE = timedelta(minutes=5)
BATCH = 100  # jobs, and datasets, per pass: a long backlog goes over several passes, the lock renewed


@dataclass
class SweepReport:
    jobs: list[str] = field(default_factory=list)  # objects deleted, rows marked
    datasets: list[str] = field(default_factory=list)
    skipped: str | None = None  # why the pass did nothing, or stopped early


def _terminal() -> list[str]:
    return [s.value for s in JobStatus if s.is_terminal]


def _delete(store: ObjectStore, prefix: str) -> None:
    store.delete_prefix(prefix)  # a prefix, or one object's exact key (both stores take either)


class RetentionSweeper:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: ObjectStore,
        holder: str = "",
        batch: int = BATCH,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.holder = holder
        self.batch = batch

    def run_once(self) -> SweepReport:
        try:
            return self._pass()
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.warning("retention: database unavailable (%s); the next pass goes on", type(exc).__name__)
            return SweepReport(skipped="database unavailable")

    def _locked(self) -> bool:
        """Takes or renews the lock (a long pass renews it between items)."""
        ttl = 3 * (self.settings.retention_sweep_seconds or 600.0)
        with self.sessions() as session:
            return try_lock(session, LOCK_NAME, self.holder, ttl_seconds=ttl)

    def _pass(self) -> SweepReport:
        if not self._locked():
            return SweepReport(skipped="another process holds the retention lock")
        report = SweepReport()
        now = utcnow()
        with self.sessions() as session:
            due = self.due_jobs(session, now, jobs_read_by_live_jobs(session))
            datasets = self.due_datasets(session, now)
        try:
            for job_id in due:
                if not self._locked():
                    return report
                if self.sweep_job(job_id, now):
                    report.jobs.append(job_id)
            for dataset_id in datasets:
                if not self._locked():
                    return report
                if self.sweep_dataset(dataset_id, now):
                    report.datasets.append(dataset_id)
        except Exception as exc:
            if not is_outage(exc) or self._database_error(exc):
                raise
            log.warning("retention: storage is unavailable (%s); the next pass goes on", type(exc).__name__)
            report.skipped = "storage unavailable"
        return report

    @staticmethod
    def _database_error(exc: Exception) -> bool:
        from sqlalchemy.exc import SQLAlchemyError

        return isinstance(exc, SQLAlchemyError)

    # -- jobs ---------------------------------------------------------------------------------------------
    def _default_cutoff(self, now: datetime) -> datetime | None:
        days = self.settings.retention_days
        return now - GRACE - timedelta(days=days) if days > 0 else None

    def due_jobs(self, session: Session, now: datetime, read: set[str]) -> list[str]:
        """Finished, unswept jobs past their date (a job never expires while queued or running), but for
        those in `read` (an unfinished job reads their files: they wait for a later pass)."""
        unswept = [Job.expired_at.is_(None), Job.status.in_(_terminal())]
        if read:
            unswept.append(Job.id.not_in(read))
        due = list(
            session.scalars(
                select(Job.id)
                .where(*unswept, Job.expires_at <= now - GRACE)
                .order_by(Job.expires_at)
                .limit(self.batch)
            )
        )
        cutoff = self._default_cutoff(now)
        if cutoff is not None:  # jobs from before retention: the deployment's current default
            due += session.scalars(
                select(Job.id)
                .where(*unswept, Job.retention_days.is_(None), Job.finished_at <= cutoff)
                .order_by(Job.finished_at)
                .limit(self.batch)
            )
        return due

    def sweep_job(self, job_id: str, now: datetime) -> bool:
        """Deletes the job's objects, then marks it and its artifacts expired with a `expired` event.
        False when it was no longer due (swept by another pass, or running again)."""
        with self.sessions() as session:
            job = session.get(Job, job_id, options=[selectinload(Job.artifacts)])
            if job is None or job.expired_at is not None or not JobStatus(job.status).is_terminal:
                return False
            expires_at = job.expires_at
            if expires_at is None:  # from before retention
                assert job.finished_at is not None
                expires_at = as_utc(job.finished_at) + timedelta(days=self.settings.retention_days)
            prefix = f"jobs/{job_id}/"
            elsewhere = [a.object_key for a in job.artifacts if not a.object_key.startswith(prefix)]
        # Its resume state, its files and samples, its dataset copy and caption snapshot all live under its
        # prefix; a stored dataset's zip (which `dataset_key` may name) does not, and is swept on its own.
        _delete(self.store, resume_state_prefix(job_id))
        for key in elsewhere:
            _delete(self.store, key)
        _delete(self.store, prefix)
        with self.sessions() as session:
            marked = session.execute(
                update(Job)
                .execution_options(synchronize_session=False)
                .where(Job.id == job_id, Job.expired_at.is_(None), Job.status.in_(_terminal()))
                .values(expired_at=now, expires_at=expires_at)
            )
            if marked.rowcount != 1:
                session.rollback()
                return False
            session.execute(
                update(Artifact)
                .execution_options(synchronize_session=False)
                .where(Artifact.job_id == job_id, Artifact.expired_at.is_(None))
                .values(expired_at=now)
            )
            add_event(
                session,
                job_id,
                "expired",
                {"expired_at": now.isoformat(), "expires_at": as_utc(expires_at).isoformat()},
            )
            session.commit()
        log.info("job %s: its retention ran out; its objects are deleted", job_id)
        return True

    # -- datasets -----------------------------------------------------------------------------------------
    def _in_use(self, cutoff: datetime) -> ColumnElement[bool]:
        """A job uses the dataset: it has not expired (or not finished), or it finished after `cutoff`."""
        return exists().where(
            Job.dataset_id == Dataset.id, or_(Job.expired_at.is_(None), Job.finished_at > cutoff)
        )

    def due_datasets(self, session: Session, now: datetime) -> list[str]:
        cutoff = self._default_cutoff(now)
        if cutoff is None:
            return []
        return list(
            session.scalars(
                select(Dataset.id)
                .where(Dataset.expired_at.is_(None), Dataset.updated_at <= cutoff, ~self._in_use(cutoff))
                .order_by(Dataset.updated_at)
                .limit(self.batch)
            )
        )

    def sweep_dataset(self, dataset_id: str, now: datetime) -> bool:
        cutoff = self._default_cutoff(now)
        assert cutoff is not None
        prefix = f"datasets/{dataset_id}/"
        with self.sessions() as session:
            dataset = session.get(Dataset, dataset_id, options=[selectinload(Dataset.images)])
            if dataset is None or dataset.expired_at is not None:
                return False
            if session.scalar(select(Dataset.id).where(Dataset.id == dataset_id, self._in_use(cutoff))):
                return False  # a job took it since the pass looked
            keys = [dataset.object_key, *(i.thumbnail_key for i in dataset.images if i.thumbnail_key)]
            elsewhere = [key for key in keys if not key.startswith(prefix)]
        for key in elsewhere:
            _delete(self.store, key)
        _delete(self.store, prefix)  # its zip and thumbnails
        with self.sessions() as session:
            session.execute(
                update(Dataset)
                .execution_options(synchronize_session=False)
                .where(Dataset.id == dataset_id, Dataset.expired_at.is_(None))
                .values(expired_at=now, updated_at=Dataset.updated_at)  # its last change stays as it was
            )
            session.commit()
        log.info("dataset %s: unused past its retention; its zip and thumbnails are deleted", dataset_id)
        return True


def start_retention_sweeper(
    settings: Settings, sessions: sessionmaker[Session], store: ObjectStore, holder: str
) -> PeriodicThread | None:
    """Passes every `retention_sweep_seconds` in a thread of their own (a pass deleting many objects holds
    nothing else up); None when this process does not sweep (0)."""
    if settings.retention_sweep_seconds <= 0:
        return None
    sweeper = RetentionSweeper(settings, sessions, store, holder=holder)
    return PeriodicThread("retention", settings.retention_sweep_seconds, sweeper.run_once).start()
