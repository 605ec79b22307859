"""Webhooks through the client and the CLI against a real `lorabake serve`: endpoints made, listed, their
secrets rotated; and a job submitted with `lorabake submit --direct --webhook`, whose events reach a
receiver of this test signed with the default secret (each once, ordered by `sequence`), retried once,
logged, and redelivered."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from lorabake.client import LorabakeAPIError, LorabakeClient
from tests.client.conftest import CONFIG, Served
from tests.client.receiver import Receiver


def test_webhooks_made_listed_rotated_and_deleted(served: Served, api: LorabakeClient, receiver: Receiver):
    """Under another owner, so that its default secret's rotation touches no other test."""
    key = api.create_key("hooks-tenant", scopes=["webhooks:read", "webhooks:write"]).key
    with LorabakeClient(served.url, key) as tenant:
        created = tenant.create_webhook(
            receiver.url("/hooks"), events=["job.succeeded", "job.failed"], description="ci"
        )
        assert created.secret.startswith("whsec_") and created.kind == "endpoint" and created.job_id is None
        assert (created.url, created.events, created.description) == (
            receiver.url("/hooks"),
            ["job.succeeded", "job.failed"],
            "ci",
        )
        assert [h.id for h in tenant.list_webhooks()] == [created.id]
        got = tenant.get_webhook(created.id)
        assert (got.url, got.events) == (created.url, created.events)
        assert "secret" not in (got.model_extra or {})
        with pytest.raises(LorabakeAPIError) as hidden:
            api.get_webhook(created.id)  # another owner's: as if it did not exist
        assert hidden.value.status == 404
        assert created.id not in [h.id for h in api.list_webhooks()]

        secret = tenant.get_webhook_secret(created.id)
        assert (secret.secret, secret.previous_secret_valid_until) == (created.secret, None)
        rotated = tenant.rotate_webhook_secret(created.id)
        assert rotated.secret.startswith("whsec_") and rotated.secret != created.secret
        assert rotated.previous_secret_valid_until is not None
        assert rotated.previous_secret_valid_until > datetime.now(UTC)  # the old one signs a while longer
        assert tenant.get_webhook_secret(created.id).secret == rotated.secret

        default = tenant.get_default_webhook_secret()
        assert default.secret.startswith("whsec_") and default.secret not in (created.secret, rotated.secret)
        assert tenant.get_default_webhook_secret().secret == default.secret  # made once, then kept
        new_default = tenant.rotate_default_webhook_secret()
        assert new_default.secret != default.secret and new_default.previous_secret_valid_until is not None
        assert tenant.get_default_webhook_secret().secret == new_default.secret
        assert tenant.get_webhook_secret(created.id).secret == rotated.secret  # endpoints keep their own

        page = tenant.list_webhook_deliveries(created.id)
        assert (page.items, page.next_cursor) == ([], None)
        with pytest.raises(LorabakeAPIError) as bad_event:
            tenant.create_webhook(receiver.url("/x"), events=["job.finished"])
        assert bad_event.value.status == 422 and "job.finished" in bad_event.value.message
        with pytest.raises(LorabakeAPIError) as bad_url:
            tenant.create_webhook("ftp://example.com/hook")
        assert (bad_url.value.status, bad_url.value.fields) == (422, ["url"])

        tenant.delete_webhook(created.id)
        assert tenant.list_webhooks() == []
        with pytest.raises(LorabakeAPIError) as gone:
            tenant.get_webhook(created.id)
        assert gone.value.status == 404
        with pytest.raises(LorabakeAPIError) as refused:
            tenant.list_jobs()
        assert (refused.value.code, refused.value.details["scope"]) == ("missing_scope", "jobs:read")

        rotated_by_cli = served.cli("webhooks", "secret", "--rotate", LORABAKE_API_KEY=key)
        assert rotated_by_cli.returncode == 0, rotated_by_cli.stderr
        assert (
            rotated_by_cli.stdout.strip() == tenant.get_default_webhook_secret().secret != new_default.secret
        )
        assert "the previous secret also signs until" in rotated_by_cli.stderr


def test_submit_direct_with_a_webhook_end_to_end(
    served: Served, api: LorabakeClient, dataset_dir: Path, config_file: Path, receiver: Receiver
):
    receiver.fail_first = {"job.succeeded"}  # the first attempt of each job.succeeded gets a 503
    made = served.cli(
        "webhooks", "create", receiver.url("/endpoint"), "--events", "job.succeeded", "--description", "e2e"
    )
    assert made.returncode == 0, made.stderr
    endpoint_id, endpoint_secret = made.stdout.split()
    try:
        listed = served.cli("webhooks", "list")
        assert listed.returncode == 0 and endpoint_id in listed.stdout and "job.succeeded" in listed.stdout
        shown = served.cli("webhooks", "secret", endpoint_id)
        assert shown.stdout.strip() == endpoint_secret

        run = served.cli(
            "submit",
            str(dataset_dir),
            "--config",
            str(config_file),
            "--direct",
            "--webhook",
            receiver.url("/job"),
            "--webhook-events",
            "job.status,job.succeeded",
            "--watch",
        )
        assert run.returncode == 0, (run.stdout, run.stderr)
        job_id = run.stdout.split("\n", 1)[0].strip()
        upload = re.search(r"straight to storage: upload ([0-9a-f]{32})", run.stderr)
        assert upload, run.stderr
        job = api.get_job(job_id)
        assert job.status == "succeeded" and job.dataset["filename"] == f"{dataset_dir.name}.zip"
        with pytest.raises(LorabakeAPIError) as used:
            api.submit_job(CONFIG, upload_id=upload.group(1))  # the job took that upload
        assert (used.value.status, used.value.code) == (409, "upload_used")

        streamed = [e for e in api.events(job_id) if e.type == "status"]

        def delivered(path: str, sequences: set[int]) -> bool:
            """Every one of these events answered 200 (deliveries arrive in no set order)."""
            ok = {r.json["sequence"] for r in receiver.requests(path, "POST") if r.answer == 200}
            return sequences <= ok

        def succeeded_at(path: str) -> bool:
            ok = [r.json for r in receiver.requests(path, "POST") if r.answer == 200]
            return any(b["type"] == "job.succeeded" and b["data"]["job"]["id"] == job_id for b in ok)

        receiver.wait_for(
            "every status at /job and job.succeeded at /endpoint",
            lambda: delivered("/job", {e.id for e in streamed}) and succeeded_at("/endpoint"),
        )

        # the job's own webhook: signed with the default secret, only the events asked for, each once (by
        # webhook-id), in the job's order once sorted by `sequence` (the /events stream's ids)
        default = api.get_default_webhook_secret().secret
        posts = receiver.requests("/job", "POST")
        bodies = [Webhook(default).verify(p.body, p.headers) for p in posts]
        with pytest.raises(WebhookVerificationError):
            Webhook(endpoint_secret).verify(posts[0].body, posts[0].headers)
        first_attempts: dict[str, dict] = {}  # by webhook-id
        for post, body in zip(posts, bodies, strict=True):
            first_attempts.setdefault(post.webhook_id, body)
        in_order = sorted(first_attempts.values(), key=lambda b: b["sequence"])
        assert {b["type"] for b in bodies} == {"job.status", "job.succeeded"}
        assert [(b["sequence"], b["data"]["event"]) for b in in_order] == [(e.id, e.data) for e in streamed]
        statuses = [b["data"]["event"]["status"] for b in in_order]
        assert statuses[0] == "queued" and statuses[-1] == "succeeded"
        assert in_order[-1]["type"] == "job.succeeded" and in_order[-1]["data"]["job"]["id"] == job_id
        assert in_order[-1]["data"]["job"]["status"] == "succeeded"

        # the 503 was retried with the same webhook-id; the delivery log shows both attempts
        succeeded_posts = [p for p in posts if p.json["type"] == "job.succeeded"]
        assert [p.answer for p in succeeded_posts] == [503, 200]
        assert len({p.webhook_id for p in succeeded_posts}) == 1
        (hook,) = api.list_webhooks(job_id=job_id)
        assert (hook.kind, hook.url) == ("job", receiver.url("/job"))
        assert hook.events == ["job.status", "job.succeeded"]
        assert api.get_webhook_secret(hook.id).secret == default
        deliveries = list(api.iter_webhook_deliveries(hook.id, page_size=2))  # pages of 2: the cursor too
        assert len(deliveries) == len(first_attempts) and {d.job_id for d in deliveries} == {job_id}
        assert {d.status for d in deliveries} == {"delivered"}
        last = next(d for d in deliveries if d.event_type == "job.succeeded")
        assert last.id == succeeded_posts[0].webhook_id
        assert [a.status_code for a in last.attempts] == [503, 200] and last.delivered_at is not None
        assert api.list_webhook_deliveries(hook.id, status="failed").items == []
        with pytest.raises(LorabakeAPIError) as not_rotatable:
            api.rotate_webhook_secret(hook.id)
        assert (not_rotatable.value.status, not_rotatable.value.code) == (409, "not_rotatable")

        again = api.redeliver_webhook(hook.id, last.id)
        assert again.id == last.id

        def attempts_of(webhook_id: str) -> list:
            return [p for p in receiver.requests("/job") if p.webhook_id == webhook_id]

        receiver.wait_for("the redelivery", lambda: len(attempts_of(last.id)) == 3)
        redelivered = attempts_of(last.id)[-1]
        assert Webhook(default).verify(redelivered.body, redelivered.headers)["type"] == "job.succeeded"

        # the registered endpoint: this job's job.succeeded, signed with its own secret
        mine = [
            r for r in receiver.requests("/endpoint") if Webhook(endpoint_secret).verify(r.body, r.headers)
        ]
        assert mine and {r.json["type"] for r in mine} == {"job.succeeded"}
        assert job_id in {r.json["data"]["job"]["id"] for r in mine}
        log = served.cli("webhooks", "deliveries", endpoint_id)
        assert log.returncode == 0, log.stderr
        row = next(line.split() for line in log.stdout.splitlines() if job_id in line)
        assert row[1:5] == ["job.succeeded", job_id, "delivered", "2"] and row[5] == "200"
        resent = served.cli("webhooks", "redeliver", endpoint_id, row[0])
        assert resent.returncode == 0, resent.stderr
        receiver.wait_for(
            "the endpoint's redelivery",
            lambda: len([r for r in receiver.requests("/endpoint") if r.webhook_id == row[0]]) == 3,
        )
    finally:
        deleted = served.cli("webhooks", "delete", endpoint_id)
    assert deleted.returncode == 0 and endpoint_id not in served.cli("webhooks", "list").stdout
