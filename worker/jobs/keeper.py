"""The job's keeper: a thread beside training that holds the lease and writes what training reports.

Training never touches the database. It hands the keeper its newest progress, stage events and status
changes; the keeper writes them, coalesced, at most once per progress interval, each write also renewing the
lease, and renews the lease on its own when there is nothing to write. A write that cannot land (the database
is down) is tried again next tick with whatever is newest by then. What the keeper learns comes back as
flags the training loop polls between steps: a cancel was asked for, the lease was lost (stop without
writing), or the database stayed down past the bound (hand the job back to the queue).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from shared.db.models import Job, JobStatus, utcnow
from shared.jobs.leases import JobLease, LeaseLost
from shared.jobs.state import add_event, set_status
from shared.outages import is_outage
from shared.retrying import OutageOutlasted, retry_outages

log = logging.getLogger("lorabake.worker")


class JobKeeper:
    def __init__(
        self,
        lease: JobLease,
        *,
        renew_every: float,
        write_every: float,
        outage_bound: float,
        usage: Callable[[Session], None] | None = None,
    ):
        self.lease = lease
        self.usage = usage  # writes what the run used so far to the usage ledger, with every write
        self.renew_every = renew_every
        self.write_every = write_every
        self.outage_bound = outage_bound
        self.lease_lost = False
        self.outage: OutageOutlasted | None = None
        self._progress: dict[str, Any] | None = None  # job columns; also the "progress" event's data
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._status: JobStatus | None = None
        self._lock = threading.Lock()  # guards the pending state
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._last_write = time.monotonic()
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._loop, name=f"keeper-{lease.job_id}", daemon=True)

    # -- what training reports (never blocks on the database) -------------------------------------------
    def report_progress(self, columns: dict[str, Any]) -> None:
        with self._lock:
            self._progress = columns

    def add_event(self, type_: str, data: dict[str, Any]) -> None:
        with self._lock:
            self._events.append((type_, data))
        self._wake.set()

    def set_status(self, status: JobStatus) -> None:
        with self._lock:
            self._status = status
        self._wake.set()

    # -- what training polls ----------------------------------------------------------------------------
    @property
    def cancel_requested(self) -> bool:
        return self.lease.cancel_requested

    @property
    def must_stop(self) -> bool:
        return self.lease_lost or self.outage is not None or self.lease.cancel_requested

    # -- the thread -------------------------------------------------------------------------------------
    def start(self) -> JobKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def flush(self) -> None:
        """Writes everything pending now, retrying through an outage up to the bound (the end of a job)."""
        retry_outages("record the job's progress", self._write, bound=self.outage_bound)

    def _loop(self) -> None:
        tick = max(0.05, min(self.write_every, self.renew_every / 3))  # never a busy loop, whatever is set
        while not self._stopped.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self._stopped.is_set():
                return
            if not self._due():
                continue
            try:
                self._write()
            except LeaseLost:
                log.warning("job %s: the lease was lost; stopping", self.lease.job_id)
                self.lease_lost = True
                return
            except Exception as exc:
                if not is_outage(exc):
                    log.exception("job %s: could not record progress", self.lease.job_id)
                    continue
                if self._outage_outlasted(exc):
                    return
                continue
            if self._down_since is not None:
                log.info(
                    "job %s: database back after %.0fs; progress recorded",
                    self.lease.job_id,
                    time.monotonic() - self._down_since,
                )
                self._down_since = None

    def _outage_outlasted(self, exc: Exception) -> bool:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "job %s: database unavailable (%s); training goes on, progress is written when it is back",
                self.lease.job_id,
                type(exc).__name__,
            )
        if now - self._down_since > self.outage_bound:
            self.outage = OutageOutlasted("database", "renew the job's lease", self.outage_bound)
            return True
        self._stopped.wait(1.0)  # while it is down, try about once a second
        return False

    def _due(self) -> bool:
        """Events and status changes go at once, progress once per write interval, a bare renewal once per
        renewal interval."""
        elapsed = time.monotonic() - self._last_write
        with self._lock:
            urgent = bool(self._events) or self._status is not None
            pending = self._progress is not None
        return urgent or (pending and elapsed >= self.write_every) or elapsed >= self.renew_every

    def _write(self) -> None:
        with self._write_lock:  # one writer at a time (the thread, or flush); training is never blocked
            with self._lock:
                progress, events, status = self._progress, list(self._events), self._status
            try:
                with self.lease.transaction() as session:
                    if progress is not None or status is not None:
                        job = self.lease.job(session)
                        if status is not None and job.status != status:
                            set_status(session, job, status)
                        if progress is not None:
                            _apply_progress(job, progress)
                    for type_, data in events:
                        add_event(session, self.lease.job_id, type_, data)
                    # training (epochs) and previews (an ETA), not captioning's bare image counts
                    if progress is not None and progress.keys() & {"epoch", "eta_seconds"}:
                        add_event(session, self.lease.job_id, "progress", progress)
                    if self.usage is not None:
                        self.usage(session)
            except LeaseLost:
                self.lease_lost = True
                raise
            with self._lock:  # drop what was written; newer reports that arrived meanwhile stay pending
                if self._progress is progress:
                    self._progress = None
                del self._events[: len(events)]
                if self._status is status:
                    self._status = None
            self._last_write = time.monotonic()


def _apply_progress(job: Job, columns: dict[str, Any]) -> None:
    for name, value in columns.items():
        setattr(job, name, value)
    if "eta_seconds" in columns:  # the queue's start estimates count down from here
        job.eta_at = utcnow()
