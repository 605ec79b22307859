"""/v1/webhooks and a job's `webhook` (training and caption jobs): what is refused up front (non-public or
malformed URLs, unknown event types) with a 422 naming the field and nothing stored, what one owner sees of
another's, and a caption job's queued event fanned out to its own webhook."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from lorabake.client import LorabakeAPIError, LorabakeClient, LorabakeClientError
from shared.db.keys import create_api_key
from shared.db.models import Job, WebhookEndpoint
from shared.db.session import session_scope
from shared.webhooks.fanout import fan_out
from tests.support.datasets import kohya_entries, write_zip
from tests.support.stack import bucket_keys

CONFIG = {"base_model": "tiny-sd15", "resolution": 64, "min_bucket_reso": 64, "epochs": 1}


def field_of(response) -> str:  # noqa: ANN001
    details = response.json()["error"]["details"]
    return details.get("field") or details["fields"][0]["field"]


def test_endpoints_are_made_listed_rotated_and_deleted_by_their_owner_only(client, headers, pg_url):
    made = client.post(
        "/v1/webhooks", headers=headers, json={"url": "https://hooks.example.com/lb", "events": []}
    )
    assert made.status_code == 201, made.text
    endpoint = made.json()
    assert endpoint["secret"].startswith("whsec_") and endpoint["kind"] == "endpoint"
    assert [e["id"] for e in client.get("/v1/webhooks", headers=headers).json()["items"]] == [endpoint["id"]]
    assert "secret" not in client.get(f"/v1/webhooks/{endpoint['id']}", headers=headers).json()

    with session_scope(pg_url) as session:
        other = {"Authorization": f"Bearer {create_api_key(session, owner=f'o-{uuid.uuid4().hex[:6]}')}"}
    assert client.get("/v1/webhooks", headers=other).json()["items"] == []
    for method, path in [
        ("GET", ""),
        ("GET", "/secret"),
        ("GET", "/deliveries"),
        ("POST", "/rotate-secret"),
        ("DELETE", ""),
    ]:
        assert (
            client.request(method, f"/v1/webhooks/{endpoint['id']}{path}", headers=other).status_code == 404
        )

    rotated = client.post(f"/v1/webhooks/{endpoint['id']}/rotate-secret", headers=headers).json()
    assert rotated["secret"] != endpoint["secret"] and rotated["previous_secret_valid_until"] is not None
    assert (
        client.get(f"/v1/webhooks/{endpoint['id']}/secret", headers=headers).json()["secret"]
        == rotated["secret"]
    )
    assert client.get(f"/v1/webhooks/{endpoint['id']}/deliveries", headers=headers).json()["items"] == []
    assert client.delete(f"/v1/webhooks/{endpoint['id']}", headers=headers).status_code == 204
    assert client.get(f"/v1/webhooks/{endpoint['id']}", headers=headers).status_code == 404
    assert client.get("/v1/webhooks", headers=headers).json()["items"] == []


def test_unsafe_or_malformed_endpoints_are_refused_naming_the_field(client, headers):
    for body, field, private in [
        ({"url": "http://127.0.0.1:9000/hook"}, "url", True),
        ({"url": "http://169.254.169.254/latest"}, "url", True),
        ({"url": "http://localhost/hook"}, "url", True),
        ({"url": "ftp://example.com/x"}, "url", False),
        ({"url": "https://example.com/x", "events": ["job.exploded"]}, "events", False),
    ]:
        response = client.post("/v1/webhooks", headers=headers, json=body)
        assert response.status_code == 422, (body, response.text)
        assert field_of(response) == field, body
        # a receiver on this machine or its network is allowed by a setting: the refusal names it
        error = response.json()["error"]
        assert ("LORABAKE_ALLOW_PRIVATE_URLS" in error["message"]) is private, error
        assert error["details"].get("setting") == ("LORABAKE_ALLOW_PRIVATE_URLS" if private else None)
    assert client.get("/v1/webhooks", headers=headers).json()["items"] == []


def test_a_job_webhook_that_is_refused_leaves_no_job_and_no_object(
    client, headers, tmp_path, s3_server, bucket
):
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    for form, field in [
        ({"webhook": "http://10.0.0.7/hook"}, "webhook"),
        ({"webhook": "https://example.com/hook", "webhook_events": "job.status,job.nope"}, "webhook_events"),
        ({"webhook_events": "job.status"}, "webhook_events"),
    ]:
        with open(zip_path, "rb") as fh:
            response = client.post(
                "/v1/jobs",
                headers=headers,
                files={"dataset": ("s.zip", fh, "application/zip")},
                data={"config": json.dumps(CONFIG), **form},
            )
        assert response.status_code == 422, (form, response.text)
        assert field_of(response) == field, form
    assert client.get("/v1/jobs", headers=headers).json()["items"] == []
    assert bucket_keys(s3_server, bucket) == []


def test_a_job_webhook_is_listed_with_the_job_and_signed_with_the_default_secret(client, headers, tmp_path):
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    with open(zip_path, "rb") as fh:
        created = client.post(
            "/v1/jobs",
            headers=headers,
            files={"dataset": ("s.zip", fh, "application/zip")},
            data={
                "config": json.dumps(CONFIG),
                "webhook": "https://example.com/hook",
                "webhook_events": '["job.succeeded", "job.failed"]',
            },
        )
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    hooks = client.get("/v1/webhooks", headers=headers, params={"job_id": job_id}).json()["items"]
    assert [(h["kind"], h["job_id"], h["events"]) for h in hooks] == [
        ("job", job_id, ["job.succeeded", "job.failed"])
    ]
    default = client.get("/v1/webhooks/default-secret", headers=headers).json()["secret"]
    assert client.get(f"/v1/webhooks/{hooks[0]['id']}/secret", headers=headers).json()["secret"] == default
    assert client.post(f"/v1/webhooks/{hooks[0]['id']}/rotate-secret", headers=headers).status_code == 409


class ViaTestClient(httpx.BaseTransport):
    """The Python client's requests, as it sends them, to the in-process app."""

    def __init__(self, test_client) -> None:  # noqa: ANN001
        self.test_client = test_client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.test_client.request(
            request.method, str(request.url), headers=dict(request.headers), content=request.read()
        )
        headers = {k: v for k, v in answer.headers.items() if k.lower() != "content-encoding"}  # decoded
        return httpx.Response(answer.status_code, headers=headers, content=answer.content)


def _caption_owner(pg_url: str) -> tuple[str, dict[str, str]]:
    owner = f"cap-{uuid.uuid4().hex[:8]}"
    with session_scope(pg_url) as session:
        return owner, {"Authorization": f"Bearer {create_api_key(session, owner=owner)}"}


def _stored_dataset(client, headers, tmp_path) -> str:  # noqa: ANN001
    zip_path = write_zip(tmp_path / "c.zip", kohya_entries(images=2, webp=False))
    with open(zip_path, "rb") as fh:
        response = client.post("/v1/datasets", headers=headers, files={"dataset": ("c.zip", fh)})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _fan_out_everything(client, pg_url: str) -> None:  # noqa: ANN001
    """What the workers' duties processes do: every job event not fanned out yet becomes deliveries."""
    with session_scope(pg_url) as session:
        while fan_out(session, client.app.state.lorabake.store, timedelta(seconds=10)):
            pass


def test_a_caption_job_webhook_gets_its_endpoint_and_its_queued_event(client, pg_url, tmp_path):
    owner, headers = _caption_owner(pg_url)
    dataset_id = _stored_dataset(client, headers, tmp_path)
    created = client.post(
        f"/v1/datasets/{dataset_id}/caption",
        headers=headers,
        json={
            "method": "wd14",
            "wd14_model": "tiny-wd14",  # a captioner the session's catalogue has
            "webhook": "https://example.com/cap",
            "webhook_events": "job.status,job.failed",
        },
    )
    assert created.status_code == 201, created.text
    job = created.json()
    assert (job["kind"], job["status"]) == ("caption", "queued")
    assert "webhook" not in job["config"] and "webhook_events" not in job["config"]  # the config alone
    hooks = client.get("/v1/webhooks", headers=headers, params={"job_id": job["id"]}).json()["items"]
    assert [(h["kind"], h["job_id"], h["url"], h["events"]) for h in hooks] == [
        ("job", job["id"], "https://example.com/cap", ["job.status", "job.failed"])
    ]
    # a filter that leaves the queued event out is kept too (JSON array, as POST /v1/jobs takes it)
    quiet = client.post(
        f"/v1/datasets/{dataset_id}/caption",
        headers=headers,
        json={
            "method": "blip",
            "blip_model": "tiny-blip",
            "webhook": "https://example.com/quiet",
            "webhook_events": ["job.succeeded"],
        },
    ).json()
    quiet_hook = client.get("/v1/webhooks", headers=headers, params={"job_id": quiet["id"]}).json()["items"]

    _fan_out_everything(client, pg_url)
    deliveries = client.get(f"/v1/webhooks/{hooks[0]['id']}/deliveries", headers=headers).json()["items"]
    assert [(d["event_type"], d["job_id"], d["status"]) for d in deliveries] == [
        ("job.status", job["id"], "pending")
    ]
    sent = deliveries[0]["payload"]["data"]
    assert (sent["job"]["id"], sent["job"]["kind"], sent["event"]) == (
        job["id"],
        "caption",
        {"status": "queued"},
    )
    assert client.get(f"/v1/webhooks/{quiet_hook[0]['id']}/deliveries", headers=headers).json()["items"] == []
    with session_scope(pg_url) as session:
        assert session.scalar(select(Job.owner).where(Job.id == job["id"])) == owner


def test_a_caption_job_webhook_that_is_refused_leaves_no_job(client, pg_url, tmp_path, s3_server, bucket):
    owner, headers = _caption_owner(pg_url)
    dataset_id = _stored_dataset(client, headers, tmp_path)
    stored = bucket_keys(s3_server, bucket)
    for body, field in [
        ({"webhook": "http://10.0.0.7/hook"}, "webhook"),
        ({"webhook": "http://localhost:8000/hook"}, "webhook"),
        ({"webhook": "ftp://example.com/hook"}, "webhook"),
        ({"webhook": 7}, "webhook"),
        ({"webhook": "https://example.com/hook", "webhook_events": "job.status,job.nope"}, "webhook_events"),
        ({"webhook": "https://example.com/hook", "webhook_events": ["job.nope"]}, "webhook_events"),
        ({"webhook": "https://example.com/hook", "webhook_events": {"a": 1}}, "webhook_events"),
        ({"webhook_events": "job.status"}, "webhook_events"),
        ({"webhook": "https://example.com/hook", "num_beams": 0}, "num_beams"),  # the config still checked
    ]:
        response = client.post(
            f"/v1/datasets/{dataset_id}/caption", headers=headers, json={"method": "wd14", **body}
        )
        assert response.status_code == 422, (body, response.text)
        assert field_of(response) == field, (body, response.json())
    assert client.get("/v1/jobs", headers=headers).json()["items"] == []
    assert bucket_keys(s3_server, bucket) == stored
    with session_scope(pg_url) as session:
        assert session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.owner == owner)).all() == []


def test_the_python_client_gives_a_caption_job_its_webhook(client, pg_url, tmp_path):
    _, headers = _caption_owner(pg_url)
    dataset_id = _stored_dataset(client, headers, tmp_path)
    key = headers["Authorization"].removeprefix("Bearer ")
    with LorabakeClient("http://testserver", key, transport=ViaTestClient(client)) as api:
        job = api.caption_dataset(
            dataset_id,
            {"method": "wd14", "wd14_model": "tiny-wd14"},
            webhook="https://example.com/c",
            webhook_events=["job.succeeded"],
        )
        assert job.kind == "caption"
        assert [(h.url, h.events) for h in api.list_webhooks(job_id=job.id)] == [
            ("https://example.com/c", ["job.succeeded"])
        ]
        with pytest.raises(LorabakeAPIError) as refused:
            api.caption_dataset(dataset_id, {"method": "wd14"}, webhook="http://127.0.0.1/hook")
        assert (refused.value.status, refused.value.fields) == (422, ["webhook"])
        with pytest.raises(LorabakeClientError):
            api.caption_dataset(dataset_id, {"method": "wd14"}, webhook_events=["job.status"])
        assert [j.id for j in api.list_jobs().items] == [job.id]
