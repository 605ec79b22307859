"""The usage ledger: GPU seconds, steps trained and images captioned per owner, UTC day, job kind and GPU
model, added to by the worker running a job as the work happens.

A worker reports absolute counts (this run's seconds so far, the step reached, the images done), never
increments: `record_job_usage` compares them with what the job's `JobUsage` row says is already counted and
adds only the difference, in the caller's transaction. So a write that is repeated (a commit whose answer was
lost, then retried) adds nothing, a run that resumes from its last resume state does not count the steps it
trains again, and a run that starts from another job's state counts only the steps after it. GPU seconds are
per run (the lease token): every run's time was really spent, including the steps a resumed run repeats. The
caller writes inside its lease transaction, so a worker presumed dead adds nothing more, and what it reported
before it died stays counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.db.models import JobUsage, UsageRecord, utcnow


@dataclass(frozen=True)
class RunUsage:
    """What one run of a job has done so far, as absolute counts."""

    owner: str
    kind: str  # the job's kind
    gpu: str  # the device's name, "cpu" on a CPU
    run_token: str  # the run's lease token
    gpu_seconds: float  # since this run started
    steps_trained: int = 0  # the step the job reached (train)
    first_step: int = 0  # the step the run started after (a resume state's; a continued LoRA's last)
    images_captioned: int = 0  # images captioned by the job (caption jobs, a training job's caption stage)


@dataclass(frozen=True)
class Added:
    gpu_seconds: float
    steps_trained: int
    images_captioned: int

    def __bool__(self) -> bool:
        return bool(self.gpu_seconds or self.steps_trained or self.images_captioned)


def record_job_usage(session: Session, job_id: str, usage: RunUsage, *, day: date | None = None) -> Added:
    """Adds what is new in `usage` to the ledger; no commit. Concurrent writes for the same job must be
    serialized by the caller (the lease transaction locks the job's row)."""
    mark = session.get(JobUsage, job_id)
    if mark is None:
        mark = JobUsage(job_id=job_id, run_token=None, gpu_seconds=0.0, steps_trained=0, images_captioned=0)
        session.add(mark)
    if mark.run_token != usage.run_token:  # a new run: its seconds start from 0
        mark.run_token, mark.gpu_seconds = usage.run_token, 0.0
    added = Added(
        gpu_seconds=max(0.0, usage.gpu_seconds - mark.gpu_seconds),
        steps_trained=max(0, usage.steps_trained - max(mark.steps_trained, usage.first_step)),
        images_captioned=max(0, usage.images_captioned - mark.images_captioned),
    )
    if not added:
        return added
    mark.gpu_seconds = max(mark.gpu_seconds, usage.gpu_seconds)
    mark.steps_trained = max(mark.steps_trained, usage.steps_trained)
    mark.images_captioned = max(mark.images_captioned, usage.images_captioned)
    add_usage(session, usage.owner, day or utcnow().date(), usage.kind, usage.gpu, added)
    return added


def add_usage(session: Session, owner: str, day: date, kind: str, gpu: str, added: Added) -> None:
    """One upsert that adds to the day's row (two workers of one owner may add to it at once)."""
    values = dict(
        owner=owner,
        day=day,
        kind=kind,
        gpu=gpu[:200],
        gpu_seconds=added.gpu_seconds,
        steps_trained=added.steps_trained,
        images_captioned=added.images_captioned,
    )
    # INSERT ... ON CONFLICT DO UPDATE, which both databases lorabake runs on speak
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    upsert = dialect.insert(UsageRecord).values(**values)
    table = UsageRecord.__table__.c
    session.execute(
        upsert.on_conflict_do_update(
            index_elements=[table.owner, table.day, table.kind, table.gpu],
            set_={
                "gpu_seconds": table.gpu_seconds + upsert.excluded.gpu_seconds,
                "steps_trained": table.steps_trained + upsert.excluded.steps_trained,
                "images_captioned": table.images_captioned + upsert.excluded.images_captioned,
            },
        )
    )
