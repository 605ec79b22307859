"""/v1/webhooks: endpoints that receive an owner's job events, their secrets and their delivery logs.

Deliveries are made by the workers' duties processes (shared/webhooks), never in a request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import select, tuple_
from sqlalchemy.orm import selectinload

from api.deps import State, WebhooksRead, WebhooksWrite
from api.idempotency import IdempotentRoute, idempotent
from api.schemas import error_responses
from api.webhooks.schemas import (
    DeliveryList,
    DeliveryOut,
    DeliveryStatus,
    EndpointCreate,
    EndpointCreated,
    EndpointList,
    EndpointOut,
    SecretOut,
)
from api.webhooks.service import owned_endpoint, owner_secret, rotate
from shared.db.models import WebhookDelivery, WebhookEndpoint, WebhookOwnerSecret, as_utc, utcnow
from shared.errors import LorabakeError, NotFoundError
from shared.net.public_http import check_url
from shared.webhooks.delivery import redeliver
from shared.webhooks.signing import new_secret

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], route_class=IdempotentRoute)
_ERRORS = error_responses(401, 403, 404, 422, 503)


def _secret_out(row: WebhookEndpoint | WebhookOwnerSecret) -> SecretOut:
    until = row.previous_secret_until
    valid = until is not None and row.previous_secret is not None and as_utc(until) > utcnow()
    return SecretOut(secret=row.secret or "", previous_secret_valid_until=until if valid else None)


@router.post(
    "", status_code=201, response_model=EndpointCreated, responses=_ERRORS, operation_id="create_webhook"
)
@idempotent(secret_fields=("secret",))
def create_webhook(body: EndpointCreate, owner: WebhooksWrite, state: State) -> EndpointCreated:
    """Register a URL that receives every event of your jobs (or those `events` name), signed as the
    Standard Webhooks specification says with the `secret` in this answer."""
    url = check_url(body.url, "url", allow_private=state.settings.allow_private_urls)
    with state.sessions() as session:
        row = WebhookEndpoint(
            owner=owner, url=url, events=body.events, description=body.description, secret=new_secret()
        )
        session.add(row)
        session.commit()
        return EndpointCreated(**EndpointOut.of(row).model_dump(), secret=row.secret or "")


@router.get("", response_model=EndpointList, responses=_ERRORS, operation_id="list_webhooks")
def list_webhooks(
    owner: WebhooksRead,
    state: State,
    job_id: Annotated[str | None, Query(description="a job's own `webhook` instead", max_length=32)] = None,
) -> EndpointList:
    """Your registered endpoints, or with `job_id` that job's own webhook."""
    query = select(WebhookEndpoint).where(
        WebhookEndpoint.owner == owner, WebhookEndpoint.deleted_at.is_(None)
    )
    query = (
        query.where(WebhookEndpoint.job_id == job_id)
        if job_id
        else query.where(WebhookEndpoint.kind == "endpoint")
    )
    with state.sessions() as session:
        rows = session.scalars(query.order_by(WebhookEndpoint.created_at))
        return EndpointList(items=[EndpointOut.of(r) for r in rows])


@router.get(
    "/default-secret", response_model=SecretOut, responses=_ERRORS, operation_id="get_default_webhook_secret"
)
def get_default_secret(owner: WebhooksRead, state: State) -> SecretOut:
    """The secret that signs your jobs' own `webhook` deliveries (registered endpoints have their own)."""
    with state.sessions() as session:
        row = owner_secret(session, owner)
        session.commit()
        return _secret_out(row)


@router.post(
    "/default-secret/rotate",
    response_model=SecretOut,
    responses=_ERRORS,
    operation_id="rotate_default_webhook_secret",
)
def rotate_default_secret(owner: WebhooksWrite, state: State) -> SecretOut:
    """A new default secret; the old one keeps signing beside it for 24 hours."""
    with state.sessions() as session:
        row = owner_secret(session, owner)
        rotate(row)
        session.commit()
        return _secret_out(row)


@router.get("/{webhook_id}", response_model=EndpointOut, responses=_ERRORS, operation_id="get_webhook")
def get_webhook(webhook_id: str, owner: WebhooksRead, state: State) -> EndpointOut:
    """One endpoint (its secret is at /secret)."""
    with state.sessions() as session:
        return EndpointOut.of(owned_endpoint(session, owner, webhook_id))


@router.delete("/{webhook_id}", status_code=204, responses=_ERRORS, operation_id="delete_webhook")
def delete_webhook(webhook_id: str, owner: WebhooksWrite, state: State) -> Response:
    """Stop sending to it; deliveries not yet made are dropped. Its delivery log goes with it."""
    with state.sessions() as session:
        owned_endpoint(session, owner, webhook_id).deleted_at = utcnow()
        session.commit()
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/secret", response_model=SecretOut, responses=_ERRORS, operation_id="get_webhook_secret"
)
def get_secret(webhook_id: str, owner: WebhooksRead, state: State) -> SecretOut:
    """The endpoint's signing secret (for a job's webhook: your default secret)."""
    with state.sessions() as session:
        row = owned_endpoint(session, owner, webhook_id)
        if row.secret is None:
            row = owner_secret(session, owner)  # a job's webhook: the owner's default secret
            session.commit()
        return _secret_out(row)


@router.post(
    "/{webhook_id}/rotate-secret",
    response_model=SecretOut,
    responses=_ERRORS,
    operation_id="rotate_webhook_secret",
)
def rotate_secret(webhook_id: str, owner: WebhooksWrite, state: State) -> SecretOut:
    """A new secret; the old one keeps signing beside it for 24 hours, so receivers can switch over."""
    with state.sessions() as session:
        row = owned_endpoint(session, owner, webhook_id)
        if row.secret is None:
            raise LorabakeError(
                "a job's webhook is signed with your default secret: rotate that one",
                code="not_rotatable",
                details={"webhook_id": webhook_id},
                status_code=409,
            )
        rotate(row)
        session.commit()
        return _secret_out(row)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=DeliveryList,
    responses=_ERRORS,
    operation_id="list_webhook_deliveries",
)
def list_deliveries(
    webhook_id: str,
    owner: WebhooksRead,
    state: State,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None, Query(description="`next_cursor` of the previous page", max_length=40)
    ] = None,
) -> DeliveryList:
    """Newest first: each delivery with every attempt (when, the receiver's status code, latency, error)."""
    with state.sessions() as session:
        owned_endpoint(session, owner, webhook_id)
        query = (
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == webhook_id)
            .options(selectinload(WebhookDelivery.attempt_log))
        )
        if status is not None:
            query = query.where(WebhookDelivery.status == status)
        if cursor is not None:
            anchor = session.get(WebhookDelivery, cursor)
            if anchor is None or anchor.endpoint_id != webhook_id:
                raise LorabakeError(
                    "unknown cursor", code="invalid_cursor", details={"field": "cursor"}, status_code=422
                )
            query = query.where(
                tuple_(WebhookDelivery.created_at, WebhookDelivery.id) < tuple_(anchor.created_at, anchor.id)
            )
        rows = list(
            session.scalars(
                query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()).limit(limit + 1)
            )
        )
        next_cursor = rows[limit - 1].id if len(rows) > limit else None
        return DeliveryList(items=[DeliveryOut.of(r) for r in rows[:limit]], next_cursor=next_cursor)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=DeliveryOut,
    responses=_ERRORS,
    operation_id="redeliver_webhook",
)
def redeliver_one(webhook_id: str, delivery_id: str, owner: WebhooksWrite, state: State) -> DeliveryOut:
    """Send it again now, with the same `webhook-id` (receivers that saw it already may drop it)."""
    with state.sessions() as session:
        owned_endpoint(session, owner, webhook_id)
        row = session.get(WebhookDelivery, delivery_id, options=[selectinload(WebhookDelivery.attempt_log)])
        if row is None or row.endpoint_id != webhook_id:
            raise NotFoundError(f"no delivery {delivery_id}", details={"delivery_id": delivery_id})
        redeliver(session, row)
        session.commit()
        return DeliveryOut.of(row)
