"""The JSON shapes of the job resources, shared by the API's responses and the webhook payloads (which carry
the same JSON as the API), so both render from one definition."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from shared.db.models import Artifact, Job, JobKind, JobStatus


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = {}


class ProgressOut(BaseModel):
    step: int
    total_steps: int
    epoch: int
    total_epochs: int
    loss: float | None
    steps_per_second: float | None
    eta_seconds: float | None
    percent: float


class ArtifactOut(BaseModel):
    id: str
    kind: str
    name: str
    epoch: int | None
    step: int | None
    is_final: bool
    size_bytes: int
    sha256: str
    created_at: datetime
    download_url: str  # our API path; it redirects to storage (S3) or streams the file (embedded)
    # kind "sample": prompt, negative_prompt, seed, width, height, cfg_scale, steps, sampler, prompt_index
    meta: dict[str, Any] | None = None
    expired_at: datetime | None = None  # retention deleted the file (its download answers 410)

    @classmethod
    def of(cls, artifact: Artifact) -> ArtifactOut:
        return cls(
            id=artifact.id,
            kind=artifact.kind,
            name=artifact.name,
            epoch=artifact.epoch,
            step=artifact.step,
            is_final=artifact.is_final,
            size_bytes=artifact.size_bytes,
            sha256=artifact.sha256,
            created_at=artifact.created_at,
            download_url=f"/v1/jobs/{artifact.job_id}/artifacts/{artifact.id}",
            meta=artifact.meta,
            expired_at=artifact.expired_at,
        )


class JobOut(BaseModel):
    id: str
    # The enums, so the OpenAPI document lists their values; they render as the same strings as the row's.
    kind: JobKind  # "train", or "caption" (captions a stored dataset)
    status: JobStatus
    queue: str | None = None  # the named queue it waits in (None: made before named queues, the default)
    dataset_id: str | None  # the stored dataset it used, if any
    continued_from: str | None = None  # POST /v1/jobs/{id}/continue: the job it trains on from
    caption_revision: int | None  # that dataset's caption revision it trained on (or produced)
    config: dict[str, Any]
    plan: dict[str, Any]
    progress: ProgressOut
    seed: int | None
    dataset: dict[str, Any]
    artifacts: list[ArtifactOut]
    error: ErrorBody | None
    cancel_requested: bool
    attempts: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # retention (docs/API.md, "Retention"): the days they are kept after it finishes (0: forever), when its
    # files, samples, dataset copy and resume state are (or were) deleted (None: kept forever, or not
    # finished), and when that was done; the job's record stays
    retention_days: int | None = None
    expires_at: datetime | None = None
    expired_at: datetime | None = None
    # while queued, in GET /v1/jobs/{id}: its place in line (1: next) and a rough start estimate (seconds)
    queue_position: int | None = None
    estimated_start_seconds: float | None = None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        percent = 100.0 * job.step / job.total_steps if job.total_steps else 0.0
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            queue=job.queue,
            dataset_id=job.dataset_id,
            continued_from=job.continued_from,
            caption_revision=job.caption_revision,
            config=job.config,
            plan=job.plan,
            progress=ProgressOut(
                step=job.step,
                total_steps=job.total_steps,
                epoch=job.epoch,
                total_epochs=job.total_epochs,
                loss=job.loss,
                steps_per_second=job.steps_per_second,
                eta_seconds=job.eta_seconds,
                percent=round(percent, 2),
            ),
            seed=job.seed,
            dataset={
                "filename": job.dataset_filename,
                "bytes": job.dataset_bytes,
                "sha256": job.dataset_sha256,
            },
            artifacts=[ArtifactOut.of(a) for a in job.artifacts],
            error=ErrorBody(code=job.error_code, message=job.error_message or "") if job.error_code else None,
            cancel_requested=job.cancel_requested,
            attempts=job.attempts,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            retention_days=job.retention_days,
            expires_at=job.expires_at,
            expired_at=job.expired_at,
        )
