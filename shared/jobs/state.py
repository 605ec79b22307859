"""Job state changes shared by the API and the worker, so both obey the same rules."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from shared.db.models import Job, JobEvent, JobStatus, utcnow
from shared.errors import ConflictError


def add_event(session: Session, job_id: str, type_: str, data: dict[str, Any]) -> None:
    session.add(JobEvent(job_id=job_id, type=type_, data=data))


def set_status(session: Session, job: Job, status: JobStatus, **fields: Any) -> None:
    job.status = status
    for name, value in fields.items():
        setattr(job, name, value)
    if status.is_terminal:
        job.finished_at = utcnow()
        job.eta_seconds = None
        if job.retention_days:  # 0: kept forever; None: a job from before retention (the sweeper's default)
            job.expires_at = job.finished_at + timedelta(days=job.retention_days)
    event: dict[str, Any] = {"status": status.value}
    if job.error_code:
        event["error"] = {"code": job.error_code, "message": job.error_message}
    add_event(session, job.id, "status", event)


def request_cancel(session: Session, job: Job) -> None:
    """A queued job is canceled at once; a running one when its worker next checks (between steps)."""
    status = JobStatus(job.status)
    if status.is_terminal:
        raise ConflictError(
            f"job {job.id} already {status.value}", code="job_finished", details={"status": status.value}
        )
    job.cancel_requested = True
    if status == JobStatus.queued:
        set_status(session, job, JobStatus.canceled)
    else:
        add_event(session, job.id, "cancel_requested", {})


RUNNING = (JobStatus.preparing, JobStatus.training, JobStatus.rendering, JobStatus.uploading)
