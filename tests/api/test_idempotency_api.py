"""Idempotency-Key on the POSTs that create something, against real Postgres, Redis and S3: a repeat gets the
first answer (one job, one enqueue), another body a 422 naming the header, a repeat while the first runs a
409 with Retry-After, never a second job; refusals and outages keep nothing; answers expire."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

import api.jobs.routes as job_routes
from api.app import create_app
from shared.db.models import Dataset, IdempotencyKey, Job, JobEvent, Upload, WebhookEndpoint, utcnow
from shared.db.session import session_factory, session_scope
from shared.idempotency import expire_idempotency_keys, key_sha256
from shared.outages import ServiceUnavailable
from tests.api.test_comparisons_api import training_job
from tests.api.test_generations_api import jobs_of, owner_of
from tests.api.test_keys_api import admin_headers
from tests.support.datasets import kohya_entries, write_zip
from tests.support.stack import settings_from_env

CONFIG = {
    "base_model": "tiny-sd15",
    "resolution": 64,
    "min_bucket_reso": 64,
    "epochs": 2,
    "batch_size": 2,
    "network_dim": 4,
    "network_alpha": 2,
    "mixed_precision": "no",
}
HEADER = "Idempotency-Key"


@pytest.fixture
def zip_path(tmp_path: Path) -> Path:
    return write_zip(tmp_path / "set.zip", kohya_entries(images=2, repeats=2))


@pytest.fixture
def owner(pg_url: str, key: str) -> str:
    return owner_of(pg_url, key)


def with_key(headers: dict[str, str], idem: str) -> dict[str, str]:
    return {**headers, HEADER: idem}


def submit(client: TestClient, headers: dict, zip_path: Path, config: dict = CONFIG, **extra: str):  # noqa: ANN201
    """A multipart submission (TestClient picks a new boundary each time, as any client does)."""
    with open(zip_path, "rb") as fh:
        return client.post(
            "/v1/jobs",
            headers={**headers, **extra},
            files={"dataset": (zip_path.name, fh, "application/zip")},
            data={"config": json.dumps(config)},
        )


def rows_of(pg_url: str, owner: str) -> list[IdempotencyKey]:
    with session_scope(pg_url) as session:
        return list(session.scalars(select(IdempotencyKey).where(IdempotencyKey.owner == owner)))


def error(response) -> dict:  # noqa: ANN001
    return response.json()["error"]


@pytest.fixture
def submissions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Counts the submissions that reached the route's work (what would have made a job)."""
    calls: list[str] = []
    real = job_routes.submit_job

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append("submit")
        return real(*args, **kwargs)

    monkeypatch.setattr(job_routes, "submit_job", counting)
    yield calls


def test_a_repeat_gets_the_first_answer_and_makes_no_second_job(
    client, headers, owner, pg_url, zip_path, submissions
):
    idem = str(uuid.uuid4())
    first = submit(client, headers, zip_path, **{HEADER: idem})
    assert first.status_code == 201, first.text
    again = submit(client, headers, zip_path, **{HEADER: idem})
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["location"] == first.headers["location"] == f"/v1/jobs/{first.json()['id']}"
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert submissions == ["submit"] and jobs_of(pg_url, owner) == 1
    with session_scope(pg_url) as session:  # one job, queued once
        queued = session.scalar(
            select(func.count()).select_from(JobEvent).where(JobEvent.job_id == first.json()["id"])
        )
    assert queued == 1
    [row] = rows_of(pg_url, owner)
    assert (row.state, row.status_code, row.key_sha256) == ("done", 201, key_sha256(idem))
    expires = row.expires_at.replace(tzinfo=None) - row.created_at.replace(tzinfo=None)
    assert timedelta(hours=24) <= expires < timedelta(hours=24, minutes=1)  # from the answer on
    # without the header, or with another key, it is a new request
    assert submit(client, headers, zip_path).json()["id"] != first.json()["id"]
    assert submit(client, headers, zip_path, **{HEADER: "other"}).json()["id"] != first.json()["id"]
    assert jobs_of(pg_url, owner) == 3


def test_keys_are_per_owner(client, headers, pg_url, zip_path):
    idem = str(uuid.uuid4())
    mine = submit(client, headers, zip_path, **{HEADER: idem}).json()
    other = admin_headers(pg_url)  # another owner, the same key
    theirs = submit(client, other, zip_path, **{HEADER: idem})
    assert theirs.status_code == 201 and theirs.json()["id"] != mine["id"]


def test_another_body_or_path_with_the_key_is_a_422_naming_it_and_stores_nothing(
    client, headers, owner, pg_url, zip_path, submissions
):
    idem = "order-42"
    first = submit(client, headers, zip_path, **{HEADER: idem}).json()
    [before] = rows_of(pg_url, owner)
    changed = submit(client, headers, zip_path, {**CONFIG, "epochs": 3}, **{HEADER: idem})
    as_json = client.post(
        "/v1/jobs", headers=with_key(headers, idem), json={"dataset_id": "x", "config": CONFIG}
    )
    elsewhere = client.post(
        "/v1/webhooks", headers=with_key(headers, idem), json={"url": "https://a.example/h"}
    )
    for refused in (changed, as_json, elsewhere):
        assert refused.status_code == 422, refused.text
        assert error(refused)["code"] == "idempotency_key_reused"
        assert error(refused)["details"] == {"field": HEADER} and HEADER in error(refused)["message"]
    assert submissions == ["submit"] and jobs_of(pg_url, owner) == 1
    [after] = rows_of(pg_url, owner)
    assert (after.fingerprint, after.response_body["id"]) == (before.fingerprint, first["id"])
    assert count(pg_url, WebhookEndpoint, owner) == 0


@pytest.mark.parametrize("value", ["", "x" * 256, "tab\there", b"caf\xc3\xa9"])
def test_a_malformed_key_is_a_422_naming_the_header(client, headers, owner, pg_url, zip_path, value):
    response = submit(client, headers, zip_path, **{HEADER: value})
    assert response.status_code == 422, response.text
    assert (error(response)["code"], error(response)["details"]) == (
        "invalid_idempotency_key",
        {"field": HEADER},
    )
    assert jobs_of(pg_url, owner) == 0 and rows_of(pg_url, owner) == []


def test_a_refused_request_keeps_nothing_and_the_key_works_once_it_is_fixed(
    client, headers, owner, pg_url, zip_path
):
    idem = str(uuid.uuid4())
    refused = submit(client, headers, zip_path, {**CONFIG, "network_dim": 0}, **{HEADER: idem})
    assert refused.status_code == 422 and error(refused)["code"] == "invalid_config"
    assert rows_of(pg_url, owner) == [] and jobs_of(pg_url, owner) == 0
    unauthorized = submit(client, {"Authorization": "Bearer lb_nope"}, zip_path, **{HEADER: idem})
    assert unauthorized.status_code == 401
    fixed = submit(client, headers, zip_path, **{HEADER: idem})
    assert fixed.status_code == 201 and jobs_of(pg_url, owner) == 1


def test_an_outage_keeps_nothing_so_a_retry_goes_through(
    client, headers, owner, pg_url, zip_path, monkeypatch
):
    real = job_routes.submit_job

    def down(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise ServiceUnavailable("storage", "the storage is unavailable right now")

    monkeypatch.setattr(job_routes, "submit_job", down)
    idem = str(uuid.uuid4())
    outage = submit(client, headers, zip_path, **{HEADER: idem})
    assert outage.status_code == 503 and outage.headers["retry-after"]
    assert rows_of(pg_url, owner) == []
    monkeypatch.setattr(job_routes, "submit_job", real)
    assert submit(client, headers, zip_path, **{HEADER: idem}).status_code == 201


def blocked_submissions(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """The route's work waits for `release` once it has begun (`entered`)."""
    entered, release = threading.Event(), threading.Event()
    real = job_routes.submit_job

    def waiting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        entered.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(job_routes, "submit_job", waiting)
    return entered, release


def test_a_repeat_while_the_first_runs_is_a_409_with_retry_after(
    client, headers, owner, pg_url, zip_path, monkeypatch
):
    entered, release = blocked_submissions(monkeypatch)
    idem = str(uuid.uuid4())
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(submit, client, headers, zip_path, **{HEADER: idem})
        assert entered.wait(30)
        during = submit(client, headers, zip_path, **{HEADER: idem})
        assert during.status_code == 409, during.text
        assert error(during)["code"] == "idempotency_key_in_use" and error(during)["details"] == {
            "field": HEADER
        }
        assert int(during.headers["retry-after"]) >= 1
        release.set()
        done = first.result(timeout=30)
    assert done.status_code == 201
    after = submit(client, headers, zip_path, **{HEADER: idem})
    assert after.json() == done.json() and jobs_of(pg_url, owner) == 1


def test_concurrent_duplicates_make_one_job(client, headers, owner, pg_url, zip_path):
    idem, start = str(uuid.uuid4()), threading.Barrier(4)

    def send(_: int):  # noqa: ANN202
        start.wait(10)
        return submit(client, headers, zip_path, **{HEADER: idem})

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, range(4)))
    made = {a.json()["id"] for a in answers if a.status_code == 201}
    assert len(made) == 1, [a.text for a in answers]
    assert {a.status_code for a in answers} <= {201, 409}
    assert all(a.headers["retry-after"] for a in answers if a.status_code == 409)
    assert jobs_of(pg_url, owner) == 1


def expire_rows_of(pg_url: str, owner: str) -> None:
    with session_scope(pg_url) as session:
        past = utcnow() - timedelta(seconds=1)
        session.execute(update(IdempotencyKey).where(IdempotencyKey.owner == owner).values(expires_at=past))


def test_after_expiry_a_repeat_is_a_new_request_and_old_rows_are_swept(
    client, headers, owner, pg_url, zip_path
):
    idem = str(uuid.uuid4())
    first = submit(client, headers, zip_path, **{HEADER: idem}).json()
    expire_rows_of(pg_url, owner)
    second = submit(client, headers, zip_path, **{HEADER: idem})
    assert second.status_code == 201 and second.json()["id"] != first["id"]
    assert "idempotent-replayed" not in second.headers
    [row] = rows_of(pg_url, owner)
    assert row.response_body["id"] == second.json()["id"]
    expire_rows_of(pg_url, owner)
    assert expire_idempotency_keys(session_factory(pg_url)) >= 1
    assert rows_of(pg_url, owner) == []


def test_the_window_is_a_setting_and_a_repeat_over_the_upload_limit_is_a_413(
    env, headers, owner, pg_url, zip_path
):
    settings = {**env, "LORABAKE_IDEMPOTENCY_HOURS": "2", "LORABAKE_MAX_UPLOAD_BYTES": "100000"}
    with TestClient(create_app(settings_from_env(settings))) as client:
        assert submit(client, headers, zip_path, **{HEADER: "k"}).status_code == 201
        huge = client.post("/v1/jobs", headers=with_key(headers, "k"), content=b"{" + b" " * 200_000 + b"}")
        assert huge.status_code == 413, huge.text
    [row] = rows_of(pg_url, owner)
    window = row.expires_at.replace(tzinfo=None) - row.created_at.replace(tzinfo=None)
    assert timedelta(hours=2) <= window < timedelta(hours=2, minutes=1)
    assert jobs_of(pg_url, owner) == 1


# --- every creating route -------------------------------------------------------------------------------


def count(pg_url: str, model: type, owner: str) -> int:
    with session_scope(pg_url) as session:
        return session.scalar(select(func.count()).select_from(model).where(model.owner == owner))


def post_dataset(client: TestClient, headers: dict, zip_path: Path):  # noqa: ANN201
    with open(zip_path, "rb") as fh:
        return client.post("/v1/datasets", headers=headers, files={"dataset": (zip_path.name, fh)})


@pytest.mark.parametrize(
    "route", ["datasets", "uploads", "caption", "comparisons", "generations", "webhooks", "jobs_json"]
)
def test_each_creating_route_honours_the_key(client, headers, owner, pg_url, zip_path, route):
    idem = str(uuid.uuid4())
    keyed = with_key(headers, idem)
    dataset_id = post_dataset(client, headers, zip_path).json()["id"]
    send, model = {
        "datasets": (lambda: post_dataset(client, keyed, zip_path), Dataset),
        "uploads": (lambda: client.post("/v1/uploads", headers=keyed, json={"filename": "a.zip"}), Upload),
        "caption": (
            lambda: client.post(
                f"/v1/datasets/{dataset_id}/caption",
                headers=keyed,
                json={"method": "blip", "blip_model": "tiny-blip"},
            ),
            Job,
        ),
        "comparisons": (
            lambda: client.post(f"/v1/jobs/{source}/comparisons", headers=keyed, json={}),
            Job,
        ),
        "generations": (
            lambda: client.post(
                "/v1/generations", headers=keyed, json={"base_model": "tiny-sd15", "prompt": "a"}
            ),
            Job,
        ),
        "webhooks": (
            lambda: client.post("/v1/webhooks", headers=keyed, json={"url": "https://hooks.example.com/x"}),
            WebhookEndpoint,
        ),
        "jobs_json": (
            lambda: client.post("/v1/jobs", headers=keyed, json={"dataset_id": dataset_id, "config": CONFIG}),
            Job,
        ),
    }[route]
    source = training_job(pg_url, owner) if route == "comparisons" else None
    before = count(pg_url, model, owner)
    first = send()
    assert first.status_code == 201, first.text
    again = send()
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers.get("location") == first.headers.get("location")
    assert count(pg_url, model, owner) == before + 1


def test_a_new_key_is_replayed_but_never_kept_readable(client, pg_url):
    admin = admin_headers(pg_url)
    idem = str(uuid.uuid4())
    body = {"owner": f"tenant-{uuid.uuid4().hex[:6]}", "name": "ci"}
    first = client.post("/v1/keys", headers=with_key(admin, idem), json=body)
    assert first.status_code == 201, first.text
    again = client.post("/v1/keys", headers=with_key(admin, idem), json=body)
    assert (again.status_code, again.json()) == (201, first.json())
    listed = client.get("/v1/keys", headers=admin, params={"owner": body["owner"]}).json()["items"]
    assert len(listed) == 1
    made = first.json()["key"]
    with session_scope(pg_url) as session:
        stored = session.scalars(
            select(IdempotencyKey).where(IdempotencyKey.key_sha256 == key_sha256(idem))
        ).one()
        assert made not in json.dumps(stored.response_body) and idem not in stored.key_sha256
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {made}"}).status_code != 401  # unsealed
