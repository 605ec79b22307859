"""Queue control over the API: per-key submission limits (429 with Retry-After, nothing stored), a queued
job's place in line, and GET /v1/queue."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from shared.db.keys import add_api_key
from shared.db.session import session_factory, session_scope
from shared.jobs.workers import forget_worker, record_heartbeat
from tests.support.datasets import kohya_entries, write_zip
from tests.support.stack import bucket_keys, settings_from_env

CONFIG = {"base_model": "tiny-sd15", "resolution": 64, "min_bucket_reso": 64, "epochs": 1}


def key_with(pg_url: str, **limits: float) -> dict[str, str]:
    with session_scope(pg_url) as session:
        _, key = add_api_key(session, owner=f"q-{uuid.uuid4().hex[:8]}", limits=limits)
    return {"Authorization": f"Bearer {key}"}


def submit(client, headers, zip_path):  # noqa: ANN001, ANN201
    with open(zip_path, "rb") as fh:
        return client.post(
            "/v1/jobs",
            headers=headers,
            files={"dataset": ("s.zip", fh, "application/zip")},
            data={"config": json.dumps(CONFIG)},
        )


def test_a_key_past_max_queued_gets_a_429_and_stores_nothing(client, pg_url, tmp_path, s3_server, bucket):
    headers = key_with(pg_url, max_queued=1)
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    first = submit(client, headers, zip_path)
    assert first.status_code == 201, first.text
    stored = bucket_keys(s3_server, bucket)
    refused = submit(client, headers, zip_path)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "too_many_queued"
    assert refused.json()["error"]["details"] == {"limit": "max_queued", "value": 1}
    assert int(refused.headers["retry-after"]) > 0
    assert bucket_keys(s3_server, bucket) == stored
    assert [j["id"] for j in client.get("/v1/jobs", headers=headers).json()["items"]] == [first.json()["id"]]
    # once it is no longer waiting, the key may submit again
    assert client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=headers).status_code == 202
    assert submit(client, headers, zip_path).status_code == 201


def test_a_key_past_its_submission_rate_is_told_when_to_come_back(client, pg_url, tmp_path):
    headers = key_with(pg_url, submissions_per_minute=2)
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    assert [submit(client, headers, zip_path).status_code for _ in range(2)] == [201, 201]
    refused = submit(client, headers, zip_path)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    other = key_with(pg_url, submissions_per_minute=2)  # another key is not held back by this one
    assert submit(client, other, zip_path).status_code == 201


@pytest.fixture
def routed_client(env) -> Iterator[TestClient]:
    """Jobs go to a queue of this test's own: in the session's shared database, jobs made without a queue
    (rows other tests write) count as every process's default queue, so a line there is not this test's."""
    routes = json.dumps({"sd1": f"line-{uuid.uuid4().hex[:8]}"})
    with TestClient(create_app(settings_from_env({**env, "LORABAKE_QUEUE_ROUTES": routes}))) as test_client:
        yield test_client


def test_a_queued_job_shows_its_place_in_line_and_the_queue_counts_yours(routed_client, headers, tmp_path):
    client = routed_client
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    first, second = (submit(client, headers, zip_path).json() for _ in range(2))
    one = client.get(f"/v1/jobs/{first['id']}", headers=headers).json()
    two = client.get(f"/v1/jobs/{second['id']}", headers=headers).json()
    assert (one["queue_position"], two["queue_position"]) == (1, 2)
    assert "estimated_start_seconds" in two
    assert two["plan"]["estimate"]["seconds"] > 0  # its predicted run time, which the jobs behind it wait
    listed = {j["id"]: j for j in client.get("/v1/jobs?status=queued", headers=headers).json()["items"]}
    assert (listed[first["id"]]["queue_position"], listed[second["id"]]["queue_position"]) == (1, 2)
    queue = client.get("/v1/queue", headers=headers).json()
    assert queue["yours"] == {"queued": 2, "running": 0} and queue["queued"] >= 2
    assert client.post(f"/v1/jobs/{first['id']}/cancel", headers=headers).status_code == 202
    moved = client.get(f"/v1/jobs/{second['id']}", headers=headers).json()
    assert moved["queue_position"] == 1  # the job ahead left the line
    canceled = client.get(f"/v1/jobs/{first['id']}", headers=headers).json()
    assert canceled["queue_position"] is None


def test_a_later_owners_job_is_placed_between_a_backlogs_jobs(routed_client, pg_url, tmp_path):
    """Owners take turns (shared/jobs/scheduling.py): the position says so before any worker is alive."""
    client = routed_client
    backlog, later = key_with(pg_url), key_with(pg_url)
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    first = [submit(client, backlog, zip_path).json()["id"] for _ in range(3)]
    theirs = submit(client, later, zip_path).json()["id"]

    def place(job_id: str, headers: dict[str, str]) -> int:
        return client.get(f"/v1/jobs/{job_id}", headers=headers).json()["queue_position"]

    assert [place(job_id, backlog) for job_id in first] == [1, 3, 4]
    assert place(theirs, later) == 2


def test_jobs_go_to_their_familys_queue_or_the_one_they_name(env, pg_url, redis_url, tmp_path):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from shared.broker_inspect import jobs_in_broker
    from tests.support.stack import settings_from_env

    routed = f"sd1-{uuid.uuid4().hex[:6]}"
    settings = settings_from_env({**env, "LORABAKE_QUEUE_ROUTES": json.dumps({"sd1": routed})})
    headers = key_with(pg_url)
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    sessions = session_factory(pg_url)
    wid = f"routed-{uuid.uuid4().hex[:6]}:1"
    with sessions() as session:  # a worker serving the routed queue has room: the job is sent at once
        record_heartbeat(session, wid, routed)
    with TestClient(create_app(settings)) as client:
        job = submit(client, headers, zip_path).json()
        assert job["queue"] == routed  # tiny-sd15 is an SD1.x model (the catalogue says so)
        assert job["id"] in jobs_in_broker(settings, stale_after=60, queues=[routed])
        assert job["id"] not in jobs_in_broker(settings, stale_after=60, queues=[settings.queue_name])
        with open(zip_path, "rb") as fh:
            named = client.post(
                "/v1/jobs",
                headers=headers,
                files={"dataset": ("s.zip", fh, "application/zip")},
                data={"config": json.dumps(CONFIG), "queue": settings.queue_name},
            )
        assert named.status_code == 201 and named.json()["queue"] == settings.queue_name
        with open(zip_path, "rb") as fh:
            unknown = client.post(
                "/v1/jobs",
                headers=headers,
                files={"dataset": ("s.zip", fh, "application/zip")},
                data={"config": json.dumps(CONFIG), "queue": "h100-only"},
            )
        assert unknown.status_code == 422 and unknown.json()["error"]["details"]["field"] == "queue"
        assert set(unknown.json()["error"]["details"]["queues"]) >= {routed, settings.queue_name}
        listed = {q["name"]: q for q in client.get("/v1/queue", headers=headers).json()["queues"]}
        assert listed[routed]["queued"] == 1 and listed[settings.queue_name]["queued"] >= 1
        position = client.get(f"/v1/jobs/{job['id']}", headers=headers).json()["queue_position"]
        assert position == 1  # alone in its queue, whatever waits in the others
    with sessions() as session:
        forget_worker(session, wid)


def test_a_start_estimate_counts_down_between_progress_reports():
    """The CLI showed "starts in ~1m57s" for 7 minutes: a running job's ETA is dated, so the estimate of the
    jobs behind it moves with the clock, and a job overdue by more than a minute makes it unknown."""
    from datetime import UTC, datetime, timedelta

    from api.queue.service import OVERDUE_SECONDS, Running, expected_starts, remaining_seconds

    now = datetime.now(UTC)
    reported = Running(eta_seconds=117.0, eta_at=now - timedelta(seconds=60), started_at=now)
    assert remaining_seconds(reported, None, now) == 57.0
    later = now + timedelta(seconds=30)
    assert expected_starts(1, [remaining_seconds(reported, None, later)], [60.0]) == [27.0]
    preparing = Running(eta_seconds=None, eta_at=None, started_at=now - timedelta(seconds=100))
    assert remaining_seconds(preparing, 300.0, now) == 200.0  # a typical run, from its start
    assert remaining_seconds(preparing, None, now) is None
    predicted = Running(None, None, started_at=now - timedelta(seconds=100), estimated_seconds=150.0)
    assert remaining_seconds(predicted, 300.0, now) == 50.0  # its own prediction beats a typical run
    stalled = Running(eta_seconds=10.0, eta_at=now - timedelta(seconds=20 + OVERDUE_SECONDS), started_at=now)
    assert remaining_seconds(stalled, 300.0, now) is None  # overdue: its end is unknown, so not shown
    late = Running(eta_seconds=10.0, eta_at=now - timedelta(seconds=20), started_at=now)
    assert remaining_seconds(late, None, now) == 0.0  # a little late: any moment now


def test_workers_report_their_cards_and_estimates_are_for_the_queues_card(env, pg_url, tmp_path):
    """A worker's heartbeat carries its GPUs (nvidia-smi's names and memory): GET /v1/queue lists them per
    queue, and a plan's estimate is for the card of the workers that would run it."""
    from shared.gpu_inventory import parse_nvidia_smi

    routed = f"cards-{uuid.uuid4().hex[:6]}"
    settings = settings_from_env({**env, "LORABAKE_QUEUE_ROUTES": json.dumps({"sd1": routed})})
    card = f"Test Card {uuid.uuid4().hex[:4]}"
    gpus = parse_nvidia_smi(f"{card}, 24564\n{card}, 24564\nnot a line\n")
    assert gpus == [{"name": card, "memory_mb": 24564}] * 2
    wid = f"cards-{uuid.uuid4().hex[:6]}:1"
    sessions = session_factory(pg_url)
    with sessions() as session:
        record_heartbeat(session, wid, routed, 2, gpus)
    headers = key_with(pg_url)
    try:
        with TestClient(create_app(settings)) as client:
            queues = {q["name"]: q for q in client.get("/v1/queue", headers=headers).json()["queues"]}
            assert queues[routed]["gpus"] == [{"name": card, "memory_mb": 24564, "count": 2}]
            assert queues[settings.queue_name]["gpus"] == []  # that card serves only the routed queue
            body = {"config": CONFIG, "counts": {"subsets": [{"folder": "img/2_a b", "images": 3}]}}
            estimate = client.post("/v1/plan", headers=headers, json=body).json()["estimate"]
            basis = estimate["training"]["basis"]
            # nothing ran on this card yet: the default table for it, or other cards' runs, saying so
            assert basis["gpu_model"] == card or card in basis["note"]
    finally:
        with sessions() as session:
            forget_worker(session, wid)
