"""Job bodies. Jobs render from their row (shared/resources.py); nothing here is computed twice."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter, WithJsonSchema

from api.webhooks.schemas import WebhookEventType
from shared.config.spec import TrainingConfig
from shared.resources import ArtifactOut, JobOut, ProgressOut

__all__ = [
    "WEBHOOK_FIELDS",
    "ArtifactOut",
    "JobJsonBody",
    "JobList",
    "JobOut",
    "ProgressOut",
    "WebhookEventsField",
    "WebhookField",
]


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None  # pass as ?cursor= for the next (older) page


def _documented_as(shape: Any) -> WithJsonSchema:
    """The OpenAPI schema of `shape` for a field taken as it comes and checked by its own parser."""
    return WithJsonSchema(TypeAdapter(shape).json_schema())


# A job's own webhook, in every body that queues a job. The values pass unchecked to
# api.webhooks.service.parse_job_webhook, the one parser of these fields (its 422s name the field).
WebhookField = Annotated[
    Any,
    _documented_as(str | None),
    Field(description="URL that receives this job's events (a public http(s) host)"),
]
WebhookEventsField = Annotated[
    Any,
    _documented_as(list[WebhookEventType] | str | None),
    Field(description="event types for `webhook`: a list, or comma-separated text; default: all"),
]
WEBHOOK_FIELDS = frozenset({"webhook", "webhook_events"})


# For the OpenAPI document only: the route reads its body itself, as it takes multipart too.
class JobJsonBody(BaseModel):
    """POST /v1/jobs as JSON: the dataset (one of `dataset_id`, `upload_id`, `dataset_url`) and the config."""

    dataset_id: str | None = Field(None, description="a stored dataset (POST /v1/datasets)")
    upload_id: str | None = Field(None, description="a zip put to POST /v1/uploads' URL")
    dataset_url: str | None = Field(None, description="an http(s) URL of a zip to fetch")
    config: TrainingConfig = Field(description="the training config (JSON text of it is taken too)")
    webhook: WebhookField = None
    webhook_events: WebhookEventsField = None
    queue: str | None = Field(
        None, description="a named queue (GET /v1/queue); default: by the model's family"
    )
