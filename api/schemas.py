"""Response bodies. Jobs render from their row; nothing here is computed twice."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from shared.models import Artifact, Dataset, DatasetImage, Job


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = {}


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` documenting our error body for these status codes."""
    return {code: {"model": ErrorResponse} for code in codes}


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
        )


class JobOut(BaseModel):
    id: str
    kind: str  # "train", or "caption" (captions a stored dataset)
    status: str
    dataset_id: str | None  # the stored dataset it used, if any
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

    @classmethod
    def of(cls, job: Job) -> JobOut:
        percent = 100.0 * job.step / job.total_steps if job.total_steps else 0.0
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            dataset_id=job.dataset_id,
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
        )


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None  # pass as ?cursor= for the next (older) page


class DatasetImageOut(BaseModel):
    id: str
    path: str
    subset: str
    is_reg: bool
    width: int
    height: int
    format: str
    caption: str | None
    caption_source: str
    thumbnail_url: str

    @classmethod
    def of(cls, image: DatasetImage) -> DatasetImageOut:
        return cls(
            id=image.id,
            path=image.path,
            subset=image.subset,
            is_reg=image.is_reg,
            width=image.width,
            height=image.height,
            format=image.format,
            caption=image.caption,
            caption_source=image.caption_source,
            thumbnail_url=f"/v1/datasets/{image.dataset_id}/images/{image.id}/thumbnail",
        )


class DatasetSummary(BaseModel):
    id: str
    name: str
    bytes: int
    sha256: str
    images: int
    reg_images: int
    subsets: list[dict[str, Any]]
    caption_revision: int
    warnings: list[dict[str, Any]]
    created_at: datetime

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetSummary:
        return cls(
            id=dataset.id,
            name=dataset.name,
            bytes=dataset.bytes,
            sha256=dataset.sha256,
            images=sum(1 for i in dataset.images if not i.is_reg),
            reg_images=sum(1 for i in dataset.images if i.is_reg),
            subsets=dataset.layout["subsets"],
            caption_revision=dataset.caption_revision,
            warnings=dataset.report.get("warnings", []),
            created_at=dataset.created_at,
        )


class DatasetOut(DatasetSummary):
    files: list[dict[str, Any]]  # the intake report: accepted, converted (how) or rejected (why)
    image_list: list[DatasetImageOut]

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetOut:
        summary = DatasetSummary.of(dataset)
        return cls(
            **summary.model_dump(),
            files=dataset.report.get("files", []),
            image_list=[DatasetImageOut.of(i) for i in dataset.images],
        )


class DatasetList(BaseModel):
    items: list[DatasetSummary]
    next_cursor: str | None


class CaptionOut(BaseModel):
    image_id: str
    path: str
    caption: str | None


class CaptionsOut(BaseModel):
    dataset_id: str
    revision: int
    captions: list[CaptionOut]


class CaptionEditResult(BaseModel):
    revision: int
    changed: int


class TagCount(BaseModel):
    tag: str
    count: int
