"""GET /v1/usage (own usage; an admin's any owner's; another owner's is a 403) and the quotas: a submission
past `gpu_seconds_per_month` or `storage_bytes` is a 429 `quota_exceeded` naming the quota, its limit and the
use, and stores nothing."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from shared.db.keys import add_api_key
from shared.db.models import Dataset, Job
from shared.db.session import session_scope
from shared.usage.ledger import RunUsage, record_job_usage
from tests.support.datasets import kohya_entries, write_zip
from tests.support.stack import bucket_keys

CONFIG = {"base_model": "tiny-sd15", "resolution": 64, "min_bucket_reso": 64, "epochs": 1}


def new_key(
    pg_url: str, owner: str | None = None, *, admin: bool = False, **limits: float
) -> tuple[str, dict]:
    owner = owner or f"use-{uuid.uuid4().hex[:8]}"
    with session_scope(pg_url) as session:
        _, key = add_api_key(session, owner, admin=admin, limits=limits)
    return owner, {"Authorization": f"Bearer {key}"}


def used(pg_url: str, owner: str, day: date, seconds: float, steps: int = 0, gpu: str = "cpu") -> str:
    """A training job of `owner` whose worker wrote this to the ledger."""
    job_id = uuid.uuid4().hex
    with session_scope(pg_url) as session:
        session.add(Job(id=job_id, owner=owner, config={}, plan={}, dataset_key=f"jobs/{job_id}/dataset.zip"))
        session.flush()
        usage = RunUsage(owner, "train", gpu, "run-1", seconds, steps_trained=steps)
        record_job_usage(session, job_id, usage, day=day)
    return job_id


def test_an_owner_reads_its_usage_by_day_and_month_and_an_admin_reads_anyones(client, pg_url):
    owner, headers = new_key(pg_url, gpu_seconds_per_month=1000, storage_bytes=10_000)
    today = datetime.now(UTC).date()
    earlier = today.replace(day=1) - timedelta(days=1)  # last month's last day
    used(pg_url, owner, today, 12.5, steps=40, gpu="NVIDIA H100 80GB HBM3")
    used(pg_url, owner, earlier, 100.0, steps=300)
    with session_scope(pg_url) as session:
        session.add(Dataset(owner=owner, object_key="d", bytes=2048, layout={}, report={}))

    mine = client.get("/v1/usage", headers=headers)
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert (body["owner"], body["group"], body["since"], body["until"]) == (
        owner, "day", today.replace(day=1).isoformat(), today.isoformat()
    )  # fmt: skip
    assert body["totals"] == {"gpu_seconds": 12.5, "steps_trained": 40, "images_captioned": 0}  # this month
    assert [p["period"] for p in body["periods"]] == [today.isoformat()]
    assert body["periods"][0]["by_kind"] == [
        {"kind": "train", "gpu": "NVIDIA H100 80GB HBM3", "gpu_seconds": 12.5, "steps_trained": 40,
         "images_captioned": 0}
    ]  # fmt: skip
    assert body["storage"]["datasets_bytes"] == body["storage"]["total_bytes"] == 2048
    assert {(q["quota"], q["limit"], q["used"]) for q in body["quotas"]} == {
        ("gpu_seconds_per_month", 1000, 12.5),
        ("storage_bytes", 10_000, 2048),
    }

    months = client.get(
        "/v1/usage", headers=headers, params={"group": "month", "since": earlier.isoformat()}
    ).json()
    assert [(p["period"], p["gpu_seconds"], p["steps_trained"]) for p in months["periods"]] == [
        (earlier.replace(day=1).isoformat(), 100.0, 300),
        (today.replace(day=1).isoformat(), 12.5, 40),
    ]

    # the same counts as Prometheus counters (all time) and the storage as a gauge, per owner
    scraped = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
    }
    cpu_train = frozenset({"owner": owner, "kind": "train", "gpu": "cpu"}.items())
    assert scraped[("lorabake_usage_gpu_seconds_total", cpu_train)] == 100.0
    assert scraped[("lorabake_usage_steps_trained_total", cpu_train)] == 300
    assert (
        scraped[("lorabake_usage_storage_bytes", frozenset({"owner": owner, "part": "datasets"}.items()))]
        == 2048
    )

    _, admin = new_key(pg_url, admin=True)
    as_admin = client.get("/v1/usage", headers=admin, params={"owner": owner})
    assert as_admin.status_code == 200 and as_admin.json()["totals"] == body["totals"]
    assert as_admin.json()["quotas"] == []  # the admin key's own quotas are not that owner's

    _, other = new_key(pg_url)
    refused = client.get("/v1/usage", headers=other, params={"owner": owner})
    assert refused.status_code == 403 and refused.json()["error"]["details"]["scope"] == "admin"
    assert client.get("/v1/usage", headers=other).json()["totals"]["gpu_seconds"] == 0  # its own: none
    backwards = client.get(
        "/v1/usage", headers=headers, params={"since": today.isoformat(), "until": earlier}
    )
    assert backwards.status_code == 422 and backwards.json()["error"]["details"]["field"] == "since"
    for bad in ("0", "2026-02-30"):  # a number pydantic would read as 1970-01-01; a day no month has
        answer = client.get("/v1/usage", headers=headers, params={"until": bad})
        assert answer.status_code == 422 and "until" in answer.text, answer.text


def test_a_submission_past_a_quota_is_a_429_naming_it_and_stores_nothing(
    client, pg_url, tmp_path, s3_server, bucket
):
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    size = zip_path.stat().st_size
    limit = size + size // 2  # room for one copy, not two
    owner, headers = new_key(pg_url, gpu_seconds_per_month=60, storage_bytes=limit)
    with open(zip_path, "rb") as fh:  # under both quotas: accepted
        first = client.post("/v1/datasets", headers=headers, files={"dataset": ("s.zip", fh)})
    assert first.status_code == 201, first.text
    assert first.json()["bytes"] == size
    stored = bucket_keys(s3_server, bucket)

    with open(zip_path, "rb") as fh:  # a second copy would pass storage_bytes
        second = client.post("/v1/datasets", headers=headers, files={"dataset": ("s.zip", fh)})
    assert second.status_code == 429, second.text
    error = second.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert error["details"] == {"quota": "storage_bytes", "limit": limit, "used": size, "adding": size}
    assert "storage_bytes" in error["message"]

    spent = used(pg_url, owner, datetime.now(UTC).date(), 61.0)  # this month's GPU seconds are spent
    with open(zip_path, "rb") as fh:
        job = client.post(
            "/v1/jobs", headers=headers, files={"dataset": ("s.zip", fh)}, data={"config": json.dumps(CONFIG)}
        )
    assert job.status_code == 429, job.text
    details = job.json()["error"]["details"]
    assert (details["quota"], details["limit"], details["used"]) == ("gpu_seconds_per_month", 60, 61.0)
    assert 0 < int(job.headers["retry-after"]) <= 31 * 86400  # when the month ends
    assert bucket_keys(s3_server, bucket) == stored
    assert [j["id"] for j in client.get("/v1/jobs", headers=headers).json()["items"]] == [spent]


def test_a_job_whose_predicted_run_would_pass_the_gpu_quota_is_refused(
    client, pg_url, tmp_path, s3_server, bucket
):
    """Under the quota, but its expected run time (plan.estimate) would take the month past it: a 429 that
    says how much it adds, and nothing stored; a roomier quota takes the same job."""
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    owner, headers = new_key(pg_url, gpu_seconds_per_month=5.5)  # 0.5 s left: less than any run takes
    used(pg_url, owner, datetime.now(UTC).date(), 5.0)
    stored = bucket_keys(s3_server, bucket)
    with open(zip_path, "rb") as fh:
        job = client.post(
            "/v1/jobs", headers=headers, files={"dataset": ("s.zip", fh)}, data={"config": json.dumps(CONFIG)}
        )
    assert job.status_code == 429, job.text
    details = job.json()["error"]["details"]
    assert (details["quota"], details["limit"], details["used"]) == ("gpu_seconds_per_month", 5.5, 5.0)
    assert details["adding"] > 0.5 and "expected to take" in job.json()["error"]["message"]
    assert bucket_keys(s3_server, bucket) == stored
    roomy_owner, roomy = new_key(pg_url, gpu_seconds_per_month=10_000_000)
    with open(zip_path, "rb") as fh:
        accepted = client.post(
            "/v1/jobs", headers=roomy, files={"dataset": ("s.zip", fh)}, data={"config": json.dumps(CONFIG)}
        )
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["plan"]["estimate"]["seconds"] < 10_000_000
