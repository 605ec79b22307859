"""Sending deliveries to receivers: signed, bounded, retried on a schedule, logged per attempt.

A pass claims due deliveries (pushing their next attempt a claim period ahead, with SKIP LOCKED on
Postgres, so processes running passes at once never send one twice at the same time), sends them on a
thread pool and records each answer. At-least-once: a process that dies mid-send leaves the claim to
lapse and the delivery is sent again, with the same `webhook-id`.

Order: none is promised. Each delivery is attempted as soon as it is due, whatever became of the
endpoint's earlier ones: waiting behind a failed one held every later event of that endpoint until its
retry (5 min after a second failure). Receivers order a job's events by the payload's `sequence`. One
endpoint gets at most PER_ENDPOINT attempts at once from a process, so a slow receiver is not flooded
and takes one pool thread each for at most `webhook_timeout_seconds`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import case, func, literal, select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import (
    Artifact,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookOwnerSecret,
    as_utc,
    utcnow,
)
from shared.net.public_http import capped_bytes, public_client
from shared.storage import ObjectStore
from shared.webhooks.signing import signature_header

log = logging.getLogger("lorabake.webhooks")

CLAIM_SECONDS = 120.0  # longer than one attempt can take
MAX_ANSWER_BYTES = 64 * 1024  # what is read of a receiver's answer (kept: its first 200 characters)
USER_AGENT = "lorabake-webhooks/1"
PER_ENDPOINT = 2  # attempts in flight to one endpoint, per process


@dataclass(frozen=True)
class Outgoing:
    delivery_id: str
    endpoint_id: str
    url: str
    body: str
    secrets: list[str]


@dataclass(frozen=True)
class Answer:
    status_code: int | None
    latency_ms: float
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _signing_secrets(secret: str | None, previous: str | None, previous_until: datetime | None) -> list[str]:
    found = [secret] if secret else []
    if previous and previous_until is not None and as_utc(previous_until) > utcnow():
        found.append(previous)
    return found


def with_fresh_storage_urls(session: Session, store: ObjectStore, rows: list[WebhookDelivery]) -> dict:
    """Delivery id -> its payload with the artifact's `storage_url` signed now: a URL signed when the event
    fanned out would have expired by a late retry. An artifact deleted since (retention) gets none."""
    wanted = {
        row.id: row.payload["data"]["artifact"].get("id")
        for row in rows
        if row.event_type == "job.artifact" and (row.payload.get("data") or {}).get("artifact")
    }
    if not wanted:
        return {}
    found = session.scalars(select(Artifact).where(Artifact.id.in_(set(wanted.values()))))
    artifacts = {a.id: a for a in found}
    fresh = {}
    for row in rows:
        if row.id not in wanted:
            continue
        artifact = artifacts.get(wanted[row.id])
        url = None
        if artifact is not None and artifact.expired_at is None:
            url = store.presigned_url(artifact.object_key, artifact.name)
        data = {**row.payload["data"], "artifact": {**row.payload["data"]["artifact"], "storage_url": url}}
        fresh[row.id] = {**row.payload, "data": data}
    return fresh


def claim_due(
    session: Session,
    limit: int,
    in_flight: Mapping[str, int] | None = None,
    per_endpoint: int = PER_ENDPOINT,
    store: ObjectStore | None = None,
) -> list[Outgoing]:
    """The longest-due deliveries, at most `per_endpoint` less `in_flight` of any one endpoint; claimed
    (with `store`, an artifact's storage URL is signed for this attempt). Commits."""
    now = utcnow()
    in_flight = in_flight or {}
    due = (WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
    when = (WebhookDelivery.next_attempt_at, WebhookDelivery.event_id)
    # ranked within each endpoint, so one endpoint's backlog cannot fill the batch and starve the others
    ranked = (
        select(
            WebhookDelivery.id,
            WebhookDelivery.endpoint_id,
            func.row_number().over(partition_by=WebhookDelivery.endpoint_id, order_by=when).label("rank"),
        )
        .where(*due)
        .subquery()
    )
    room = (
        case(
            {e: per_endpoint - n for e, n in in_flight.items()},
            value=ranked.c.endpoint_id,
            else_=per_endpoint,
        )
        if in_flight
        else literal(per_endpoint)
    )
    rows = list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.id.in_(select(ranked.c.id).where(ranked.c.rank <= room)), *due)
            .order_by(*when, WebhookDelivery.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if not rows:
        session.commit()
        return []
    endpoints = {
        e.id: e
        for e in session.scalars(
            select(WebhookEndpoint).where(WebhookEndpoint.id.in_({r.endpoint_id for r in rows}))
        )
    }
    owner_secrets = {
        s.owner: s
        for s in session.scalars(
            select(WebhookOwnerSecret).where(WebhookOwnerSecret.owner.in_({r.owner for r in rows}))
        )
    }
    fresh = with_fresh_storage_urls(session, store, rows) if store is not None else {}
    claimed: list[Outgoing] = []
    for row in rows:
        endpoint = endpoints.get(row.endpoint_id)
        if endpoint is None or endpoint.deleted_at is not None:
            row.status, row.next_attempt_at, row.last_error = "failed", None, "the endpoint was deleted"
            continue
        signer = owner_secrets.get(row.owner) if endpoint.secret is None else endpoint
        keys = (
            _signing_secrets(signer.secret, signer.previous_secret, signer.previous_secret_until)
            if signer
            else []
        )
        if not keys:  # a job webhook whose owner has no default secret yet: made at submission, so never
            row.status, row.next_attempt_at, row.last_error = "failed", None, "no signing secret"
            continue
        row.next_attempt_at = now + timedelta(seconds=CLAIM_SECONDS)
        body = json.dumps(fresh.get(row.id, row.payload), separators=(",", ":"), sort_keys=True)
        claimed.append(Outgoing(row.id, endpoint.id, endpoint.url, body, keys))
    session.commit()
    return claimed


def send(client: httpx.Client, item: Outgoing) -> Answer:
    sent_at = utcnow()
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": item.delivery_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": signature_header(item.secrets, item.delivery_id, sent_at, item.body),
    }
    started = time.perf_counter()
    try:
        with client.stream("POST", item.url, content=item.body.encode(), headers=headers) as response:
            answer = b"".join(capped_bytes(response, MAX_ANSWER_BYTES))
            status = response.status_code
    except Exception as exc:  # a receiver's failure is data, never ours: refused, timed out, too big
        return Answer(None, (time.perf_counter() - started) * 1000, f"{type(exc).__name__}: {exc}"[:500])
    latency = (time.perf_counter() - started) * 1000
    error = None if 200 <= status < 300 else answer.decode("utf-8", "replace")[:200] or None
    return Answer(status, latency, error)


def record(session: Session, delivery_id: str, answer: Answer, schedule: list[float]) -> None:
    """The attempt in the log, and the delivery delivered, failed (schedule done) or due again. Commits."""
    row = session.get(WebhookDelivery, delivery_id)
    if row is None:
        return
    now = utcnow()
    session.add(
        WebhookAttempt(
            delivery_id=delivery_id,
            at=now,
            status_code=answer.status_code,
            latency_ms=round(answer.latency_ms, 1),
            error=answer.error,
        )
    )
    row.attempts += 1
    row.last_status_code, row.last_error = answer.status_code, answer.error
    if answer.ok:
        row.status, row.delivered_at, row.next_attempt_at = "delivered", now, None
    elif row.attempts > len(schedule):
        row.status, row.next_attempt_at = "failed", None
        log.warning(
            "webhook %s to endpoint %s: gave up after %d attempts", row.id, row.endpoint_id, row.attempts
        )
    else:
        row.next_attempt_at = now + timedelta(seconds=schedule[row.attempts - 1])
    session.commit()


def redeliver(session: Session, delivery: WebhookDelivery) -> None:
    """Send it again now, with the same id (whatever it was: delivered, failed or pending). No commit."""
    delivery.status, delivery.next_attempt_at = "pending", utcnow()


class Deliverer:
    """Keeps up to `concurrency` attempts in flight, at most PER_ENDPOINT of them to any one endpoint, so
    a dead or slow receiver holds two threads for at most a timeout each and nobody else waits for it."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        schedule: list[float],
        timeout_seconds: float,
        concurrency: int,
        allow_private: bool,
        store: ObjectStore | None = None,
    ) -> None:
        self.sessions = sessions
        self.store = store  # signs artifacts' storage URLs per attempt
        self.schedule = schedule
        self.concurrency = concurrency
        self.client = public_client(allow_private=allow_private, timeout=httpx.Timeout(timeout_seconds))
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="webhook")
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}  # endpoint id -> attempts running

    def run_once(self) -> int:
        """Claims what the free threads can take and starts it; returns how many it started."""
        with self._lock:
            free = self.concurrency - sum(self._in_flight.values())
            in_flight = dict(self._in_flight)
        if free <= 0:
            return 0
        with self.sessions() as session:
            batch = claim_due(session, limit=free, in_flight=in_flight, store=self.store)
        for item in batch:
            with self._lock:
                self._in_flight[item.endpoint_id] = self._in_flight.get(item.endpoint_id, 0) + 1
            self.pool.submit(self._attempt, item)
        return len(batch)

    def _attempt(self, item: Outgoing) -> None:
        try:
            answer = send(self.client, item)
            with self.sessions() as session:
                record(session, item.delivery_id, answer, self.schedule)
        except Exception:  # the database blinked: the claim lapses and the delivery is sent again
            log.warning("webhook %s: could not record its attempt", item.delivery_id, exc_info=True)
        finally:
            with self._lock:
                self._in_flight[item.endpoint_id] -= 1
                if not self._in_flight[item.endpoint_id]:
                    del self._in_flight[item.endpoint_id]

    def idle(self) -> bool:
        with self._lock:
            return not self._in_flight

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
