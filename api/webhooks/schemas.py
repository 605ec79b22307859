"""Bodies of /v1/webhooks."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from shared.webhooks.events import EVENT_TYPES

_EVENTS_HELP = f"event types to send (any of {', '.join(EVENT_TYPES)}); empty or left out: all of them"
# Enums in the OpenAPI document, so generated clients get unions; the values are those stored and sent.
WebhookEventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
DeliveryStatus = Literal["pending", "delivered", "failed"]


def checked_events(value: list[str] | None) -> list[str]:
    events = list(dict.fromkeys(value or []))
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event type {unknown[0]!r}; types are {', '.join(EVENT_TYPES)}")
    return events


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000, description="http(s) URL the events are POSTed to")
    events: list[WebhookEventType] = Field(default_factory=list, description=_EVENTS_HELP)
    description: str = Field("", max_length=500)

    @field_validator("events", mode="before")
    @classmethod
    def _known_events(cls, value: Any) -> Any:
        # before the enum's check, so an unknown type is refused by its name (anything else: by its type)
        if isinstance(value, list) and all(isinstance(e, str) for e in value):
            return checked_events(value)
        return value


class EndpointOut(BaseModel):
    id: str
    kind: str = Field(description="endpoint (registered: every event of yours) or job (one job's `webhook`)")
    job_id: str | None
    url: str
    events: list[WebhookEventType]
    description: str
    created_at: datetime

    @classmethod
    def of(cls, row: WebhookEndpoint) -> EndpointOut:
        return cls(
            id=row.id,
            kind=row.kind,
            job_id=row.job_id,
            url=row.url,
            events=list(row.events or []),
            description=row.description,
            created_at=row.created_at,
        )


class EndpointCreated(EndpointOut):
    secret: str = Field(description="verifies the signatures (Standard Webhooks `whsec_` secret)")


class EndpointList(BaseModel):
    items: list[EndpointOut]


class SecretOut(BaseModel):
    secret: str = Field(description="the `whsec_` secret that signs these webhooks")
    previous_secret_valid_until: datetime | None = Field(
        None, description="after a rotation, the old secret also signs until then"
    )


class AttemptOut(BaseModel):
    at: datetime
    status_code: int | None = Field(description="the receiver's answer; null when there was none")
    latency_ms: float
    error: str | None

    @classmethod
    def of(cls, row: WebhookAttempt) -> AttemptOut:
        return cls(at=row.at, status_code=row.status_code, latency_ms=row.latency_ms, error=row.error)


class DeliveryOut(BaseModel):
    id: str = Field(description="the `webhook-id` header of every attempt")
    event_type: WebhookEventType
    job_id: str | None
    status: DeliveryStatus = Field(
        description="pending (being sent or retried), delivered, or failed (retries ran out)"
    )
    attempts: list[AttemptOut]
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    payload: dict

    @classmethod
    def of(cls, row: WebhookDelivery) -> DeliveryOut:
        return cls(
            id=row.id,
            event_type=row.event_type,
            job_id=row.job_id,
            status=row.status,
            attempts=[AttemptOut.of(a) for a in row.attempt_log],
            next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
            created_at=row.created_at,
            delivered_at=row.delivered_at,
            payload=row.payload,
        )


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None = None
