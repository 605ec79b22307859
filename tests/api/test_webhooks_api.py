"""/v1/webhooks and a job's `webhook`: what is refused up front (non-public or malformed URLs, unknown event
types) with a 422 naming the field and nothing stored, and what one owner sees of another's."""

from __future__ import annotations

import json
import uuid

from shared.db.keys import create_api_key
from shared.db.session import session_scope
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
    for body, field in [
        ({"url": "http://127.0.0.1:9000/hook"}, "url"),
        ({"url": "http://169.254.169.254/latest"}, "url"),
        ({"url": "http://localhost/hook"}, "url"),
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "https://example.com/x", "events": ["job.exploded"]}, "events"),
    ]:
        response = client.post("/v1/webhooks", headers=headers, json=body)
        assert response.status_code == 422, (body, response.text)
        assert field_of(response) == field, body
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
