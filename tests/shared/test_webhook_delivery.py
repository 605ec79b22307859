"""Webhook delivery against a receiver of the test's own, on a database of its own: a delivery that fails is
retried on its schedule while the endpoint's later events go at once (they used to wait behind it, up to 5
minutes after a second failure; issue 15), another endpoint is untouched, and no endpoint gets more than
its share of attempts at once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from standardwebhooks.webhooks import Webhook

from shared.db.models import WebhookDelivery, WebhookEndpoint, utcnow
from shared.db.session import session_factory
from shared.jobs.state import add_event
from shared.settings import Settings
from shared.storage import build_store
from shared.webhooks.delivery import claim_due
from shared.webhooks.dispatcher import WebhookDispatcher
from shared.webhooks.signing import new_secret
from tests.client.receiver import Received, Receiver
from tests.support.job_rows import make_job

RETRY_SECONDS = 6.0  # the first retry; a later event's first attempt must come well before it


@pytest.fixture
def hook_settings(own_db, tmp_path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=own_db,
        allow_private_urls=True,  # the receiver is on 127.0.0.1
        webhook_retry_schedule=[RETRY_SECONDS, 60.0],
        webhook_timeout_seconds=5.0,
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def _endpoint(settings: Settings, owner: str, url: str) -> WebhookEndpoint:
    with session_factory(settings.database_url)() as session:
        endpoint = WebhookEndpoint(owner=owner, url=url, secret=new_secret())
        session.add(endpoint)
        session.commit()
        session.expunge(endpoint)
        return endpoint


def _event(settings: Settings, job_id: str, type_: str, data: dict) -> None:
    with session_factory(settings.database_url)() as session:
        add_event(session, job_id, type_, data)
        session.commit()


def _posts(receiver: Receiver, path: str, event_type: str) -> list[Received]:
    return [r for r in receiver.requests(path, "POST") if r.json["type"] == event_type]


def test_a_failing_endpoint_does_not_delay_another_events_first_attempt(hook_settings, receiver):
    settings = hook_settings
    job_id = make_job(settings, owner="hooks")
    a = _endpoint(settings, "hooks", receiver.url("/a"))
    b = _endpoint(settings, "hooks", receiver.url("/b"))
    receiver.answers["/a"] = 500  # endpoint A fails the first event
    _event(settings, job_id, "status", {"status": "queued"})
    dispatcher = WebhookDispatcher(settings, session_factory(settings.database_url), build_store(settings))
    dispatcher.start()
    try:
        receiver.wait_for(
            "the first event at A (failed) and at B",
            lambda: _posts(receiver, "/a", "job.status") and _posts(receiver, "/b", "job.status"),
            timeout=30,
        )
        failed_at = time.monotonic()
        (failed,) = _posts(receiver, "/a", "job.status")
        assert failed.answer == 500
        receiver.answers["/a"] = 200  # A is back: the failed event's retry and the later event succeed

        _event(settings, job_id, "stage", {"stage": "loading_model"})
        receiver.wait_for(
            "the later event's first attempt at A, before the failed one's retry",
            lambda: _posts(receiver, "/a", "job.stage") and _posts(receiver, "/b", "job.stage"),
            timeout=RETRY_SECONDS / 2,
        )
        assert len(_posts(receiver, "/a", "job.status")) == 1  # its retry is not due yet
        (later,) = _posts(receiver, "/a", "job.stage")
        assert later.answer == 200

        receiver.wait_for(
            "the failed event's retry", lambda: len(_posts(receiver, "/a", "job.status")) == 2, timeout=30
        )
        assert time.monotonic() - failed_at >= RETRY_SECONDS - 0.5  # on its schedule, not sooner
    finally:
        dispatcher.stop()

    retried = _posts(receiver, "/a", "job.status")[1]
    assert (retried.answer, retried.webhook_id, retried.body) == (200, failed.webhook_id, failed.body)
    for endpoint, path in ((a, "/a"), (b, "/b")):
        bodies = {
            r.webhook_id: Webhook(endpoint.secret).verify(r.body, r.headers)
            for r in receiver.requests(path, "POST")
        }
        by_type = {p["type"]: p for p in bodies.values()}  # each event once per endpoint, by webhook-id
        assert len(bodies) == 2 and set(by_type) == {"job.status", "job.stage"}
        # what a receiver orders by: the job's sequence, and each event's own timestamp
        assert by_type["job.stage"]["sequence"] > by_type["job.status"]["sequence"]
        assert by_type["job.stage"]["timestamp"] >= by_type["job.status"]["timestamp"]
    assert [r.answer for r in receiver.requests("/b", "POST")] == [200, 200]  # B never waited nor failed


def _delivery(delivery_id: str, endpoint_id: str, job_id: str, event_id: int) -> WebhookDelivery:
    return WebhookDelivery(
        id=delivery_id,
        endpoint_id=endpoint_id,
        owner="hooks",
        job_id=job_id,
        event_id=event_id,
        event_type="job.status",
        payload={},
        next_attempt_at=utcnow(),
    )


def test_claims_respect_the_per_endpoint_cap_without_starving_other_endpoints(hook_settings):
    settings = hook_settings
    job_id = make_job(settings, owner="hooks")
    busy = _endpoint(settings, "hooks", "http://127.0.0.1:9/busy")
    quiet = _endpoint(settings, "hooks", "http://127.0.0.1:9/quiet")
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        # a backlog at one endpoint, all due before the other endpoint's one delivery
        session.add_all(_delivery(f"msg_busy{n}", busy.id, job_id, n) for n in range(6))
        session.commit()
        session.add(_delivery("msg_quiet", quiet.id, job_id, 9))
        session.commit()
        claimed = claim_due(session, limit=3, in_flight={busy.id: 1}, per_endpoint=2)
    assert [c.delivery_id for c in claimed] == ["msg_busy0", "msg_quiet"]
    with sessions() as session:
        assert [c.delivery_id for c in claim_due(session, limit=8)] == ["msg_busy1", "msg_busy2"]


def test_an_artifacts_storage_url_is_signed_for_each_attempt(hook_settings, s3_server, bucket):
    """Signed when the event fanned out, a late retry's URL had expired (issue 19): each claim signs anew,
    and a file retention deleted since gets none."""
    from shared.db.models import Artifact

    settings = hook_settings.model_copy(
        update={
            "storage_backend": "s3",
            "s3_bucket": bucket,
            "s3_endpoint_url": s3_server.url,
            "s3_access_key_id": "testing",
            "s3_secret_access_key": "testing",
        }
    )
    store = build_store(settings)
    job_id = make_job(settings, owner="hooks")
    endpoint = _endpoint(settings, "hooks", "https://receiver.example/hook")
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        kept = Artifact(job_id=job_id, kind="lora", name="a.safetensors", object_key=f"jobs/{job_id}/a",
                        size_bytes=1, sha256="0" * 64)
        gone = Artifact(job_id=job_id, kind="lora", name="b.safetensors", object_key=f"jobs/{job_id}/b",
                        size_bytes=1, sha256="0" * 64, expired_at=utcnow())
        session.add_all([kept, gone])
        session.flush()
        for n, artifact in enumerate((kept, gone)):
            stale = {"id": artifact.id, "storage_url": "https://expired.example/old"}
            session.add(
                WebhookDelivery(
                    id=f"msg_url{n}",
                    endpoint_id=endpoint.id,
                    owner="hooks",
                    job_id=job_id,
                    event_id=n + 1,
                    event_type="job.artifact",
                    payload={"type": "job.artifact", "data": {"artifact": stale}},
                    created_at=utcnow(),
                    next_attempt_at=utcnow(),
                )
            )
        session.commit()
        bodies = {c.delivery_id: json.loads(c.body) for c in claim_due(session, limit=8, store=store)}
    fresh = bodies["msg_url0"]["data"]["artifact"]["storage_url"]
    assert fresh.startswith(s3_server.url) and f"jobs/{job_id}/a" in fresh and "Signature" in fresh
    assert bodies["msg_url1"]["data"]["artifact"]["storage_url"] is None
