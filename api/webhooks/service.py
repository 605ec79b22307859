"""Webhook endpoints and secrets, as the routes and job submission use them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from api.webhooks.schemas import checked_events
from shared.db.models import WebhookEndpoint, WebhookOwnerSecret, utcnow
from shared.errors import LorabakeError, NotFoundError
from shared.net.public_http import check_url
from shared.settings import Settings
from shared.webhooks.signing import ROTATION_GRACE_HOURS, new_secret


def owned_endpoint(session: Session, owner: str, endpoint_id: str) -> WebhookEndpoint:
    row = session.get(WebhookEndpoint, endpoint_id) if len(endpoint_id) == 32 else None
    if row is None or row.owner != owner or row.deleted_at is not None:  # another owner's: as if missing
        raise NotFoundError(f"no webhook endpoint {endpoint_id}", details={"webhook_id": endpoint_id})
    return row


def owner_secret(session: Session, owner: str) -> WebhookOwnerSecret:
    """The owner's default secret (signs per-job webhooks), made on first use. Flushes, no commit."""
    row = session.get(WebhookOwnerSecret, owner)
    if row is None:
        row = WebhookOwnerSecret(owner=owner, secret=new_secret())
        session.add(row)
        session.flush()
    return row


def rotate(row: WebhookEndpoint | WebhookOwnerSecret) -> None:
    """A new secret; the old one signs beside it for ROTATION_GRACE_HOURS, so receivers can switch."""
    row.previous_secret = row.secret
    row.previous_secret_until = utcnow() + timedelta(hours=ROTATION_GRACE_HOURS)
    row.secret = new_secret()


def job_webhook(
    session: Session, settings: Settings, owner: str, job_id: str, url: str, events: list[str]
) -> WebhookEndpoint:
    """A job's own `webhook`, signed with the owner's default secret. Added to the session, no commit."""
    owner_secret(session, owner)
    row = WebhookEndpoint(
        owner=owner,
        kind="job",
        job_id=job_id,
        url=check_url(url, "webhook", allow_private=settings.allow_private_urls),
        events=events,
    )
    session.add(row)
    return row


@dataclass(frozen=True)
class JobWebhook:
    url: str
    events: list[str]


def parse_job_webhook(url: object, events: object, settings: Settings) -> JobWebhook | None:
    """POST /v1/jobs' `webhook` (URL) and `webhook_events` (a JSON array, or comma-separated text in a
    multipart form); None without a webhook. A 422 naming the field at fault."""
    if url is None or url == "":
        if events not in (None, "", []):
            raise _invalid("webhook_events needs a webhook", "webhook_events")
        return None
    if not isinstance(url, str):
        raise _invalid("webhook must be a URL (a string)", "webhook")
    check_url(url, "webhook", allow_private=settings.allow_private_urls)
    if isinstance(events, str):
        text = events.strip()
        try:
            events = (
                json.loads(text)
                if text.startswith("[")
                else [e.strip() for e in text.split(",") if e.strip()]
            )
        except ValueError as exc:
            raise _invalid("webhook_events is not a JSON array", "webhook_events") from exc
    if events is None:
        events = []
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise _invalid("webhook_events must be a list of event types", "webhook_events")
    try:
        return JobWebhook(url, checked_events(events))
    except ValueError as exc:
        raise _invalid(str(exc), "webhook_events") from exc


def _invalid(message: str, field: str) -> LorabakeError:
    return LorabakeError(message, code="invalid_webhook", details={"field": field}, status_code=422)
