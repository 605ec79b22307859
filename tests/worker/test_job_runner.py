"""The worker's claim rules against real Postgres: the row is the truth, re-deliveries never redo work."""

from __future__ import annotations

import uuid

import pytest

from shared.db.models import Job, JobEvent, JobStatus
from shared.db.session import session_scope
from shared.settings import Settings
from worker.jobs.runner import JobRunner


@pytest.fixture
def runner(pg_url, tmp_path) -> JobRunner:
    return JobRunner(Settings(data_dir=tmp_path, database_url=pg_url, max_attempts=2))


def make_job(pg_url: str, **fields) -> str:
    job_id = uuid.uuid4().hex
    with session_scope(pg_url) as session:
        session.add(
            Job(id=job_id, owner="t", config={"base_model": "x"}, plan={}, dataset_key="missing", **fields)
        )
    return job_id


def load(pg_url: str, job_id: str) -> Job:
    with session_scope(pg_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def events(pg_url: str, job_id: str) -> list[str]:
    with session_scope(pg_url) as session:
        return [e.data.get("status", e.type) for e in session.query(JobEvent).filter_by(job_id=job_id)]


@pytest.mark.parametrize("status", [JobStatus.succeeded, JobStatus.failed, JobStatus.canceled])
def test_redelivered_finished_job_is_left_alone(runner, pg_url, status):
    job_id = make_job(pg_url, status=status, attempts=1)
    runner.run(job_id)
    job = load(pg_url, job_id)
    assert (job.status, job.attempts) == (status, 1)
    assert events(pg_url, job_id) == []


def test_cancel_requested_before_start_cancels_without_running(runner, pg_url):
    job_id = make_job(pg_url, status=JobStatus.queued, cancel_requested=True)
    runner.run(job_id)
    job = load(pg_url, job_id)
    assert job.status == JobStatus.canceled and job.attempts == 0 and job.finished_at is not None


def test_job_that_keeps_killing_its_worker_fails_after_max_attempts(runner, pg_url):
    job_id = make_job(pg_url, status=JobStatus.training, attempts=2)
    runner.run(job_id)
    job = load(pg_url, job_id)
    assert job.status == JobStatus.failed and job.error_code == "too_many_attempts"


def test_unknown_job_id_is_dropped(runner):
    runner.run("does-not-exist")  # nothing to claim, nothing raised


def test_missing_dataset_object_fails_the_job_with_its_reason(runner, pg_url):
    job_id = make_job(pg_url, status=JobStatus.queued)
    runner.run(job_id)
    job = load(pg_url, job_id)
    assert (job.status, job.attempts, job.error_code) == (JobStatus.failed, 1, "dataset_unavailable")
    assert job.error_message and "missing" in job.error_message  # the object key it could not fetch
    assert events(pg_url, job_id) == ["preparing", "failed"]
