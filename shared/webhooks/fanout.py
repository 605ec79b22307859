"""Job events to webhook deliveries: the outbox's second half.

Every change to a job writes a job event in the same transaction (shared.jobs.state), so an event exists
exactly when the change does. This pass takes events not yet fanned out (`webhooks_at` unset), writes one
delivery per endpoint that wants it, and marks the event, all in one transaction: a pass that dies leaves
the events to the next. Rows are taken with SKIP LOCKED on Postgres, so every worker's duties process may
run it at once without sending an event twice. Nothing here talks to a receiver (delivery.py does).
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session, selectinload

from shared.db.models import Job, JobEvent, WebhookDelivery, WebhookEndpoint, as_utc, utcnow
from shared.storage import ObjectStore
from shared.webhooks.events import payload, webhook_type

BATCH = 200


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(16)


def _wants(endpoint: WebhookEndpoint, event_type: str) -> bool:
    return not endpoint.events or event_type in endpoint.events


def _progress_sent_recently(session: Session, endpoint_id: str, job_id: str, within: timedelta) -> bool:
    return bool(
        session.scalar(
            select(
                exists().where(
                    WebhookDelivery.endpoint_id == endpoint_id,
                    WebhookDelivery.job_id == job_id,
                    WebhookDelivery.event_type == "job.progress",
                    WebhookDelivery.created_at > utcnow() - within,
                )
            )
        )
    )


def fan_out(session: Session, store: ObjectStore, progress_every: timedelta, batch: int = BATCH) -> int:
    """One pass; returns how many events it took (so the caller knows whether to go again at once)."""
    events = list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.webhooks_at.is_(None))
            .order_by(JobEvent.id)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
    )
    if not events:
        return 0
    job_ids = {e.job_id for e in events}
    jobs = {
        j.id: j
        for j in session.scalars(select(Job).where(Job.id.in_(job_ids)).options(selectinload(Job.artifacts)))
    }
    owners = {j.owner for j in jobs.values()}
    endpoints = list(
        session.scalars(
            select(WebhookEndpoint).where(
                WebhookEndpoint.owner.in_(owners),
                WebhookEndpoint.deleted_at.is_(None),
                or_(WebhookEndpoint.kind == "endpoint", WebhookEndpoint.job_id.in_(job_ids)),
            )
        )
    )
    now = utcnow()
    for event in events:
        event.webhooks_at = now
        job = jobs.get(event.job_id)
        event_type = webhook_type(event)
        if job is None or event_type is None:
            continue
        targets = [
            e
            for e in endpoints
            if e.owner == job.owner and (e.kind == "endpoint" or e.job_id == job.id) and _wants(e, event_type)
        ]
        if event_type == "job.progress":
            targets = [
                e for e in targets if not _progress_sent_recently(session, e.id, job.id, progress_every)
            ]
        if not targets:
            continue
        storage_url = None
        if event_type == "job.artifact":
            artifact = next((a for a in job.artifacts if a.id == event.data.get("id")), None)
            storage_url = store.presigned_url(artifact.object_key, artifact.name) if artifact else None
        body = payload(event_type, event, job, storage_url, as_utc(event.created_at).isoformat())
        for endpoint in targets:
            session.add(
                WebhookDelivery(
                    id=new_message_id(),
                    endpoint_id=endpoint.id,
                    owner=job.owner,
                    job_id=job.id,
                    event_id=event.id,
                    event_type=event_type,
                    payload=body,
                    created_at=now,
                    next_attempt_at=now,
                )
            )
        session.flush()  # the next progress check sees this pass's own deliveries
    session.commit()
    return len(events)
