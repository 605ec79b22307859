"""Dataset bodies: the stored dataset, its images, captions and tags; an upload's JSON form, a caption job."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from api.datasets.service import DatasetOptions
from api.errors import validated
from api.jobs.schemas import WEBHOOK_FIELDS, WebhookEventsField, WebhookField
from shared.config.captioning import CaptionConfig
from shared.db.models import Dataset, DatasetImage
from shared.model_families import ModelFamily


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
    # retention deleted its zip and thumbnails (unused for the deployment's retention_days); the record stays
    expired_at: datetime | None = None

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
            expired_at=dataset.expired_at,
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
    source: str | None = Field(
        None,
        description="What made this revision: upload, edit, or the caption method (blip, florence2, ...).",
    )
    captioner: dict[str, Any] | None = Field(
        None,
        description="For a caption job's revision: its `method`, `model` and every option (`options`).",
    )


class CaptionEditResult(BaseModel):
    revision: int
    changed: int


class TagCount(BaseModel):
    tag: str
    count: int


# For the OpenAPI document only: the route reads its body itself, as it takes multipart too.
class DatasetJsonBody(BaseModel):
    """POST /v1/datasets as JSON: the zip as one of `upload_id`, `dataset_url`, and the options."""

    upload_id: str | None = Field(None, description="a zip put to POST /v1/uploads' URL")
    dataset_url: str | None = Field(None, description="an http(s) URL of a zip to fetch")
    options: DatasetOptions | None = Field(
        None, description="name, and for flat zips repeats, trigger_word, class_word (JSON text is taken too)"
    )


class CaptionJobRequest(CaptionConfig):
    """The caption config, and the job's own webhook as POST /v1/jobs takes it."""

    model_family: ModelFamily | None = Field(
        None,
        description="The family the captions are for: `method: auto` takes that family's captioner "
        "(docs/datasets.md); ignored when a method is named.",
    )
    webhook: WebhookField = None
    webhook_events: WebhookEventsField = None

    def caption_config(self) -> CaptionConfig:
        """The config alone, `auto` resolved: what the job records and the worker reads. Built again from
        the request's fields, so any check that fails here is a 422 naming the field, never a 500."""
        fields = self.model_dump(exclude={*WEBHOOK_FIELDS, "model_family"}, exclude_unset=True)
        config = validated(CaptionConfig, fields, "caption config", "validation_error")
        return config.for_family(self.model_family)
