"""The API when a server it depends on is down or hung: 503 with Retry-After and a code naming the server,
never a 500; readiness within 2 s whatever is down; a refused request stores nothing; and a job submitted
while the broker is down is accepted and sent once it is back.

The API runs in-process; Postgres, Redis and the S3 server are reached through fault-injecting proxies.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from shared.broker_inspect import job_id_of
from shared.db.keys import create_api_key
from shared.db.models import Job, JobStatus
from shared.db.session import session_factory, session_scope
from shared.jobs.workers import forget_worker, record_heartbeat
from tests.support.datasets import kohya_entries, write_zip
from tests.support.faultproxy import FaultProxy
from tests.support.stack import bucket_keys, settings_from_env, stack_env

CONFIG = {"base_model": "tiny-sd15", "resolution": 64, "min_bucket_reso": 64, "epochs": 1}


def proxy_for(url: str) -> FaultProxy:
    parts = urlsplit(url)
    return FaultProxy(parts.hostname, parts.port).start()


@pytest.fixture
def proxies(pg_url, redis_url, s3_server) -> Iterator[dict[str, FaultProxy]]:
    made = {
        "database": proxy_for(pg_url.replace("postgresql+psycopg", "postgresql")),
        "broker": proxy_for(redis_url),
        "storage": proxy_for(s3_server.url),
    }
    yield made
    for proxy in made.values():
        proxy.stop()


@pytest.fixture
def settings(proxies, pg_url, redis_url, s3_server, bucket, tmp_path, models_dir):
    env = stack_env(
        pg_url=proxies["database"].url_for(pg_url),
        redis_url=proxies["broker"].url_for(redis_url),
        s3_url=proxies["storage"].url_for(s3_server.url),
        bucket=bucket,
        data_dir=tmp_path / "data",
        models_dir=models_dir,
        reconcile_interval_seconds="0",
        db_connect_timeout_seconds="1",
        db_pool_timeout_seconds="2",
        s3_connect_timeout_seconds="1",
        s3_read_timeout_seconds="1",
        broker_timeout_seconds="1",
        # a queue of this test's own: jobs other tests write without a queue count as the default one's
        queue_routes=json.dumps({"sd1": f"outage-{uuid.uuid4().hex[:8]}"}),
    )
    return settings_from_env(env)


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def fresh_headers(pg_url: str) -> dict[str, str]:
    with session_scope(pg_url) as session:
        key = create_api_key(session, owner=f"owner-{uuid.uuid4().hex[:8]}")
    return {"Authorization": f"Bearer {key}"}


def owner_jobs(pg_url: str, headers: dict[str, str]) -> list[Job]:
    from shared.db.keys import owner_for_key

    with session_scope(pg_url) as session:
        owner = owner_for_key(session, headers["Authorization"].split()[1])
        return list(session.scalars(select(Job).where(Job.owner == owner)))


def submit(client: TestClient, headers: dict[str, str], zip_path, config=CONFIG):  # noqa: ANN001, ANN201
    with open(zip_path, "rb") as fh:
        return client.post(
            "/v1/jobs",
            headers=headers,
            files={"dataset": ("set.zip", fh, "application/zip")},
            data={"config": json.dumps(config)},
        )


def assert_unavailable(response, service: str) -> None:  # noqa: ANN001
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == f"{service}_unavailable"
    assert int(response.headers["retry-after"]) > 0


def timed_readyz(client: TestClient) -> tuple[float, dict]:
    started = time.monotonic()
    response = client.get("/readyz")
    elapsed = time.monotonic() - started
    assert response.status_code in (200, 503)
    return elapsed, response.json()


def test_database_down_is_a_503_everywhere_and_stores_nothing(
    client, proxies, pg_url, bucket, s3_server, tmp_path
):
    known = fresh_headers(pg_url)
    assert client.get("/v1/jobs", headers=known).status_code == 200  # this key's owner is remembered
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    proxies["database"].refuse()
    try:
        assert_unavailable(client.get("/v1/jobs", headers=known), "database")
        assert_unavailable(client.get("/v1/jobs", headers=fresh_headers(pg_url)), "database")  # the key check
        assert_unavailable(client.get(f"/v1/jobs/{uuid.uuid4().hex}", headers=known), "database")
        assert_unavailable(submit(client, known, zip_path), "database")
        elapsed, ready = timed_readyz(client)
        assert elapsed < 2 and ready["checks"]["database"].startswith("error")
        assert ready["checks"]["storage"] == "ok"
    finally:
        proxies["database"].restore()
    assert bucket_keys(s3_server, bucket) == []  # the refused submission left no object behind
    assert owner_jobs(pg_url, known) == []
    assert client.get("/v1/jobs", headers=known).status_code == 200
    assert submit(client, known, zip_path).status_code == 201


def test_a_poll_is_answered_as_soon_as_the_database_is_back(client, proxies, pg_url, tmp_path):
    """The reader's pool retries its connections with a doubling backoff (1 s, 2 s, 4 s...), so once the
    database is back its next connection can be seconds away; a poll must not wait for that."""
    headers = fresh_headers(pg_url)
    created = submit(client, headers, write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False)))
    job_url = f"/v1/jobs/{created.json()['id']}"
    assert client.get(job_url, headers=headers).status_code == 200
    proxies["database"].refuse()
    try:
        outage_began = time.monotonic()
        # polls go on (the pool retries, and grows to serve them) until its attempts, at about 0, 1, 3 and
        # 7 s, are all behind and the next is near 15 s
        while time.monotonic() - outage_began < 8.5:
            assert_unavailable(client.get(job_url, headers=headers), "database")
            time.sleep(0.2)
    finally:
        proxies["database"].restore()
    # waiting on the pool (2 s here) would answer 503 before its next attempt; reading afresh answers now
    response = client.get(job_url, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == created.json()["id"]


def test_storage_down_is_a_503_and_leaves_no_rows(client, proxies, pg_url, tmp_path):
    headers = fresh_headers(pg_url)
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    proxies["storage"].refuse()
    try:
        assert_unavailable(submit(client, headers, zip_path), "storage")
        with open(zip_path, "rb") as fh:
            response = client.post("/v1/datasets", headers=headers, files={"dataset": ("s.zip", fh)})
        assert_unavailable(response, "storage")
        elapsed, ready = timed_readyz(client)
        assert elapsed < 2 and ready["checks"]["storage"].startswith("error")
    finally:
        proxies["storage"].restore()
    assert owner_jobs(pg_url, headers) == []
    assert client.get("/v1/datasets", headers=headers).json()["items"] == []
    assert submit(client, headers, zip_path).status_code == 201


def test_a_hung_storage_server_is_answered_in_seconds(client, proxies, pg_url, tmp_path):
    headers = fresh_headers(pg_url)
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    proxies["storage"].blackhole()
    try:
        elapsed, ready = timed_readyz(client)
        assert elapsed < 2 and ready["status"] == "not_ready", ready
        assert ready["checks"]["storage"].startswith("error")
        started = time.monotonic()
        assert_unavailable(submit(client, headers, zip_path), "storage")
        assert time.monotonic() - started < 10  # read timeout x attempts, not boto3's minute
    finally:
        proxies["storage"].restore()
    assert owner_jobs(pg_url, headers) == []


def test_a_job_submitted_while_the_broker_is_down_is_accepted_and_sent_when_it_is_back(
    client, proxies, settings, pg_url, redis_url, tmp_path
):
    headers = fresh_headers(pg_url)
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    wid = f"outage-{uuid.uuid4().hex[:6]}:1"
    with session_factory(pg_url)() as session:  # a worker with room for both: only the broker is missing
        record_heartbeat(session, wid, settings.queue_routes["sd1"], slots=2)
    proxies["broker"].refuse()
    try:
        started = time.monotonic()
        response = submit(client, headers, zip_path)
        assert response.status_code == 201, response.text
        assert time.monotonic() - started < 5
        second = submit(client, headers, zip_path)  # the dispatcher knows the broker is down: no wait
        assert second.status_code == 201
        elapsed, ready = timed_readyz(client)
        assert elapsed < 2 and ready["checks"]["broker"].startswith("error")
    finally:
        proxies["broker"].restore()
    ids = {response.json()["id"], second.json()["id"]}
    jobs = owner_jobs(pg_url, headers)
    assert {j.id for j in jobs} == ids
    assert all(j.status == JobStatus.queued and j.enqueued_at is None for j in jobs)
    # the service's own scheduler sends them once its broker is back (after the dispatcher's cool-down)
    deadline = time.monotonic() + 20
    while not all(j.enqueued_at is not None for j in owner_jobs(pg_url, headers)):
        assert time.monotonic() < deadline, "the jobs were not sent once the broker was back"
        time.sleep(0.5)
    broker = redis.Redis.from_url(redis_url)
    try:
        assert ids <= {job_id_of(m) for m in broker.lrange(settings.queue_routes["sd1"], 0, -1)}
    finally:
        broker.delete(settings.queue_routes["sd1"])
        broker.close()
        with session_factory(pg_url)() as session:
            forget_worker(session, wid)
