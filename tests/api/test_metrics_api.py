"""GET /metrics in-process, on the real Postgres (and SQLite, the embedded mode's database) and Redis: the
job gauges and duration histograms read from rows of known states, requests labelled by route template, the
token, and a scrape that still answers while the database or the broker is down."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from shared.db.keys import create_api_key
from shared.db.migrate import upgrade
from shared.db.models import Job, JobStatus, WorkerProcess, utcnow
from shared.db.session import get_engine, session_scope
from tests.support import services
from tests.support.faultproxy import FaultProxy
from tests.support.stack import settings_from_env, stack_env

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
MakeClient = Callable[..., AbstractContextManager[TestClient]]


def scrape(client: TestClient, headers: dict[str, str] | None = None) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


@pytest.fixture
def make_client(redis_url, s3_server, bucket, tmp_path, models_dir) -> Iterator[MakeClient]:
    """An app on the given database and broker (the real ones unless given), on a queue of its own."""
    queues: list[str] = []

    @contextmanager
    def make(database_url: str, broker_url: str = redis_url, **extra: str) -> Iterator[TestClient]:
        env = stack_env(
            pg_url=database_url,
            redis_url=broker_url,
            s3_url=s3_server.url,
            bucket=bucket,
            data_dir=tmp_path / "data",
            models_dir=models_dir,
            reconcile_interval_seconds="0",
            **extra,
        )
        queues.append(env["LORABAKE_QUEUE_NAME"])
        with TestClient(create_app(settings_from_env(env)), raise_server_exceptions=False) as client:
            yield client

    yield make
    redis.Redis.from_url(redis_url).delete(*queues)  # the messages tests sent to queues no worker reads


# -- the service's state, from the database and the broker --------------------------------------------------


@pytest.fixture(params=["postgres", "sqlite"])
def fresh_database(request, tmp_path) -> Iterator[str]:
    """A database with only this test's jobs in it, so counts are exact."""
    if request.param == "postgres":
        with services.migrated_database() as url:
            yield url
        return
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    upgrade(url)
    yield url
    get_engine(url).dispose()


def add_job(
    session, status: JobStatus, *, queued: float | None, ran: float | None, ago: float, **fields
) -> str:  # noqa: ANN001
    """A job created `ago` seconds back, started `queued` seconds after that, ended `ran` seconds later."""
    created = utcnow() - timedelta(seconds=ago)
    started = created + timedelta(seconds=queued) if queued is not None else None
    finished = started + timedelta(seconds=ran) if started is not None and ran is not None else None
    job = Job(
        owner="metrics",
        status=status,
        config={},
        plan={},
        dataset_key="unused",
        created_at=created,
        started_at=started,
        finished_at=finished,
        **fields,
    )
    session.add(job)
    session.flush()
    return job.id


def test_job_counts_durations_workers_and_queue_come_from_the_service_state(make_client, fresh_database):
    day = 86400.0
    with session_scope(fresh_database) as session:
        add_job(session, JobStatus.queued, queued=None, ran=None, ago=30)
        add_job(session, JobStatus.queued, queued=None, ran=None, ago=20)
        add_job(session, JobStatus.queued, queued=None, ran=None, ago=5, queue="gpu-big")
        add_job(session, JobStatus.preparing, queued=3, ran=None, ago=60)
        training = add_job(session, JobStatus.training, queued=8, ran=None, ago=200, steps_per_second=2.5)
        add_job(session, JobStatus.succeeded, queued=20, ran=100, ago=3000)
        add_job(session, JobStatus.succeeded, queued=40, ran=700, ago=5000)
        add_job(session, JobStatus.failed, queued=2, ran=50, ago=900)
        add_job(session, JobStatus.canceled, queued=None, ran=None, ago=10)  # canceled before any start
        add_job(session, JobStatus.succeeded, queued=5, ran=600, ago=3 * day)  # long before the window
        now = utcnow()
        session.add(WorkerProcess(id="fresh:1", hostname="fresh", last_seen_at=now))
        session.add(WorkerProcess(id="gone:2", hostname="gone", last_seen_at=now - timedelta(hours=1)))

    with make_client(fresh_database) as client:
        assert client.app.state.lorabake.dispatcher.send(uuid.uuid4().hex)  # one message waits in the queue
        samples = scrape(client)
        queue = client.app.state.lorabake.settings.queue_name

    jobs = {status.value: value(samples, "lorabake_jobs", status=status.value) for status in JobStatus}
    assert jobs == {
        "queued": 3,
        "preparing": 1,
        "training": 1,
        "rendering": 0,
        "uploading": 0,
        "succeeded": 3,
        "failed": 1,
        "canceled": 1,
    }
    assert value(samples, "lorabake_workers_alive") == 1
    assert value(samples, "lorabake_queue_depth", queue=queue) == 1
    waiting = {labels: v for (name, labels), v in samples.items() if name == "lorabake_queue_waiting"}
    assert waiting == {frozenset({("queue", queue)}): 2, frozenset({("queue", "gpu-big")}): 1}
    # only the job in training reports a speed (the preparing one has none yet)
    speeds = {labels: v for (name, labels), v in samples.items() if name == "lorabake_job_steps_per_second"}
    assert speeds == {frozenset({("job_id", training)}): 2.5}

    # queued: the five jobs started in the last 24 h waited 3, 8, 20, 40 and 2 seconds
    queued = {
        le: value(samples, "lorabake_job_queued_seconds_bucket", le=le)
        for le in ("1.0", "5.0", "15.0", "30.0", "60.0", "+Inf")
    }
    assert queued == {"1.0": 0, "5.0": 2, "15.0": 3, "30.0": 4, "60.0": 5, "+Inf": 5}
    assert value(samples, "lorabake_job_queued_seconds_count") == 5
    assert value(samples, "lorabake_job_queued_seconds_sum") == pytest.approx(73, abs=0.01)

    # running: of the jobs ended in the last 24 h, two succeeded (100 s, 700 s) and one failed (50 s)
    def running(status: str, le: str) -> float | None:
        return value(samples, "lorabake_job_running_seconds_bucket", status=status, le=le)

    assert [running("succeeded", le) for le in ("60.0", "300.0", "600.0", "1800.0", "+Inf")] == [
        0,
        1,
        1,
        2,
        2,
    ]
    assert value(samples, "lorabake_job_running_seconds_sum", status="succeeded") == pytest.approx(
        800, abs=0.01
    )
    assert [running("failed", le) for le in ("30.0", "60.0", "+Inf")] == [0, 1, 1]
    assert value(samples, "lorabake_job_running_seconds_count", status="canceled") == 0

    assert value(samples, "lorabake_scrape_errors_total", source="database") == 0
    assert value(samples, "lorabake_scrape_errors_total", source="broker") == 0


# -- requests, by route template ------------------------------------------------------------------------


def test_requests_are_counted_by_route_template_and_unknown_paths_as_unmatched(make_client, pg_url):
    with session_scope(pg_url) as session:
        headers = {
            "Authorization": f"Bearer {create_api_key(session, owner=f'owner-{uuid.uuid4().hex[:8]}')}"
        }
    missing = uuid.uuid4().hex
    with make_client(pg_url) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get(f"/v1/jobs/{missing}", headers=headers).status_code == 404
        assert client.get(f"/v1/jobs/{missing}").status_code == 401
        assert client.get(f"/no/such/{missing}").status_code == 404
        first = scrape(client)
        second = scrape(client)

    def requests(route: str, status: str) -> float | None:
        return value(first, "lorabake_http_requests_total", method="GET", route=route, status=status)

    assert requests("/healthz", "200") == 1
    assert requests("/v1/jobs/{job_id}", "404") == 1
    assert requests("/v1/jobs/{job_id}", "401") == 1
    assert requests("unmatched", "404") == 1
    assert (
        value(first, "lorabake_http_request_duration_seconds_count", method="GET", route="/v1/jobs/{job_id}")
        == 2
    )
    # no raw path became a label value
    assert not [labels for _, labels in first if any(missing in v for _, v in labels)]
    # a scrape is counted once answered, so the next one shows it
    assert value(second, "lorabake_http_requests_total", method="GET", route="/metrics", status="200") == 1


def test_a_metrics_token_is_required_once_set_and_metrics_stay_out_of_the_schema(make_client, pg_url):
    with make_client(pg_url, metrics_token="s3cret-token") as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_metrics_token"
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        samples = scrape(client, headers={"Authorization": "Bearer s3cret-token"})
        assert (
            value(samples, "lorabake_http_requests_total", method="GET", route="/metrics", status="401") == 2
        )
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]


# -- outages: the scrape answers with what it can read -------------------------------------------------------


def proxy_for(url: str) -> FaultProxy:
    parts = urlsplit(url)
    return FaultProxy(parts.hostname, parts.port).start()


def test_a_scrape_answers_while_the_database_or_the_broker_is_down(make_client, pg_url, redis_url):
    db_proxy = proxy_for(pg_url.replace("postgresql+psycopg", "postgresql"))
    broker_proxy = proxy_for(redis_url)
    try:
        with make_client(
            db_proxy.url_for(pg_url),
            broker_proxy.url_for(redis_url),
            db_connect_timeout_seconds="1",
            db_pool_timeout_seconds="2",
            broker_timeout_seconds="1",
        ) as client:
            queue = client.app.state.lorabake.settings.queue_name
            assert value(scrape(client), "lorabake_jobs", status="queued") is not None

            db_proxy.refuse()
            try:
                down = scrape(client)
            finally:
                db_proxy.restore()
            assert not names(down) & {
                "lorabake_jobs",
                "lorabake_workers_alive",
                "lorabake_job_queued_seconds_count",
            }
            assert value(down, "lorabake_scrape_errors_total", source="database") == 1
            assert value(down, "lorabake_queue_depth", queue=queue) == 0  # the broker was still read
            assert (
                value(down, "lorabake_http_requests_total", method="GET", route="/metrics", status="200") == 1
            )

            broker_proxy.refuse()
            try:
                broker_down = scrape(client)
            finally:
                broker_proxy.restore()
            assert value(broker_down, "lorabake_queue_depth", queue=queue) is None
            assert value(broker_down, "lorabake_scrape_errors_total", source="broker") == 1
            assert value(broker_down, "lorabake_jobs", status="queued") is not None  # the database is back
            assert value(broker_down, "lorabake_scrape_errors_total", source="database") == 1
    finally:
        db_proxy.stop()
        broker_proxy.stop()
