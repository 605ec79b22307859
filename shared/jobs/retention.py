"""Retention: how long a finished job's objects are kept, and what a job or dataset past it answers.

A job's `retention_days` is fixed when it is submitted (`job_retention_days`): its config's `retention_days`,
else the deployment's `retention_days`, both within its key's `max_retention_days`; 0 keeps it forever. When
the job finishes, shared.jobs.state.set_status dates it (`expires_at`). From that date its downloads answer
410 naming it, and the sweeper (shared/jobs/sweeper.py) deletes its objects and marks the rows
(`expired_at`). Jobs from before retention (`retention_days` NULL) follow the deployment's current default.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import ApiKey, Artifact, Dataset, Job, JobKind, JobStatus, as_utc, is_object_id, utcnow
from shared.errors import LorabakeError

RETENTION_FIELD = "config.retention_days"


class Expired(LorabakeError):
    """The thing's stored objects were deleted by retention (its record is kept)."""

    status_code = 410
    code = "expired"


def job_retention_days(asked: int | None, default_days: int, key_max: float | None) -> int:
    """The days a new job's objects are kept after it finishes (0: forever). A 422 naming the field when
    `asked` goes past the key's maximum; asking nothing takes the default, shortened to the key's maximum."""
    if asked is not None:
        if key_max is not None and (asked == 0 or asked > key_max):
            wanted = "forever (0)" if asked == 0 else f"{asked} days"
            raise LorabakeError(
                f"{RETENTION_FIELD} asks to keep the files {wanted}; "
                f"this key allows at most {int(key_max)} days",
                code="retention_too_long",
                details={"field": RETENTION_FIELD, "max_retention_days": int(key_max)},
                status_code=422,
            )
        return asked
    if key_max is not None and (default_days == 0 or default_days > key_max):
        return int(key_max)
    return default_days


def key_max_retention(session: Session, api_key_id: str | None) -> float | None:
    if api_key_id is None:
        return None
    limits = session.scalar(select(ApiKey.limits).where(ApiKey.id == api_key_id)) or {}
    value = limits.get("max_retention_days")
    return float(value) if value is not None else None


def set_job_retention(session: Session, job: Job, config: dict[str, Any], default_days: int) -> None:
    """Fixes a job's retention before it is first stored (any kind: a comparison's or a generation's images
    are kept as its key and the deployment say, a training job's as its config asks within them)."""
    training = (job.kind or JobKind.train) == JobKind.train  # the column's default is not set until a flush
    asked = config.get("retention_days") if training else None
    job.retention_days = job_retention_days(asked, default_days, key_max_retention(session, job.api_key_id))


def is_expired(job: Job, now: datetime | None = None) -> bool:
    """Past its expiry date (whether or not the sweeper has deleted its objects yet)."""
    if job.expired_at is not None:
        return True
    return job.expires_at is not None and as_utc(job.expires_at) <= (now or utcnow())


def _day(value: datetime) -> str:
    return as_utc(value).date().isoformat()


def check_job_files(job: Job, artifact: Artifact | None = None) -> None:
    """A 410 naming the date when the job's files (or this one of them) expired."""
    expired = artifact.expired_at if artifact is not None else None
    if expired is None and not is_expired(job):
        return
    when = job.expires_at or expired or job.expired_at
    assert when is not None
    what = f"file {artifact.name} of job {job.id}" if artifact is not None else f"files of job {job.id}"
    raise Expired(
        f"the {what} expired on {_day(when)} (retention); the job's record is kept",
        details={"job_id": job.id, "expired_on": _day(when), "expires_at": as_utc(when).isoformat()},
    )


def check_dataset(dataset: Dataset, field: str | None = None) -> None:
    """A 410 naming the date when the dataset's zip and thumbnails were deleted by retention."""
    if dataset.expired_at is None:
        return
    details = {"dataset_id": dataset.id, "expired_on": _day(dataset.expired_at)}
    raise Expired(
        f"dataset {dataset.id} expired on {_day(dataset.expired_at)} (retention): its zip and thumbnails are "
        "deleted; upload it again",
        details={**details, "field": field} if field else details,
    )


def _named_ids(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if is_object_id(value):
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _named_ids(item)
    elif isinstance(value, list):
        for item in value:
            yield from _named_ids(item)


def jobs_read_by_live_jobs(session: Session) -> set[str]:
    """The jobs whose files an unfinished job reads: a comparison's (`source_job_id`, `epochs[].job_id`), a
    generation's LoRAs (`loras[].job_id`), a continued job: any job id its config or plan names."""
    live = [s.value for s in JobStatus if not s.is_terminal]
    read: set[str] = set()
    rows = session.execute(select(Job.config, Job.plan, Job.continued_from).where(Job.status.in_(live)))
    for config, plan, continued_from in rows:
        read.update(_named_ids(config))
        read.update(_named_ids(plan))
        if continued_from:
            read.add(continued_from)
    return read
