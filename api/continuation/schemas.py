"""The body of POST /v1/jobs/{id}/continue."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from api.jobs.schemas import WebhookEventsField, WebhookField


class ContinueRequest(BaseModel):
    """Train a succeeded job on by `epochs` more, as a new job (`continued_from` names the source)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(
        ge=1, le=999, description="Epochs to add: a 3-epoch job continued by 2 writes epochs 4 and 5."
    )
    webhook: WebhookField = None
    webhook_events: WebhookEventsField = None
