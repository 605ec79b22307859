"""Leases on Postgres and SQLite: one claim wins, a live lease makes a delivery do nothing, and a worker whose
lease moved on can write nothing more."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from shared.db.migrate import upgrade
from shared.db.models import Job, JobEvent, JobStatus, utcnow
from shared.db.session import get_engine, session_factory
from shared.jobs.leases import JobLease, LeaseLost, claim_job


@pytest.fixture(params=["postgres", "sqlite"])
def db_url(request, pg_url, tmp_path):
    if request.param == "postgres":
        yield pg_url
        return
    url = f"sqlite:///{tmp_path / 'leases.db'}"
    upgrade(url)
    yield url
    get_engine(url).dispose()


def make_job(url: str, **fields) -> str:
    job_id = uuid.uuid4().hex
    with session_factory(url)() as session:
        session.add(Job(id=job_id, owner="t", config={}, plan={}, dataset_key="k", **fields))
        session.commit()
    return job_id


def load(url: str, job_id: str) -> Job:
    with session_factory(url)() as session:
        job = session.get(Job, job_id)
        session.expunge(job)
        return job


def statuses(url: str, job_id: str) -> list[str]:
    with session_factory(url)() as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        return [e.data.get("status", e.type) for e in rows]


def claim(url: str, job_id: str, worker: str = "w", lease_seconds: float = 30, max_attempts: int = 3):
    return claim_job(
        session_factory(url), job_id, worker, lease_seconds=lease_seconds, max_attempts=max_attempts
    )


def expire(url: str, job_id: str) -> None:
    with session_factory(url)() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()


def test_of_concurrent_claims_of_a_job_exactly_one_wins(db_url):
    for _ in range(5):
        job_id = make_job(db_url)
        barrier = threading.Barrier(4)
        results = []

        def contend(
            name: str, job_id: str = job_id, barrier: threading.Barrier = barrier, results: list = results
        ) -> None:
            barrier.wait()
            for _attempt in range(20):  # SQLite: a writer that lost the race may see "database is locked"
                try:
                    results.append(claim(db_url, job_id, worker=name).claim)
                    return
                except Exception as exc:
                    if "locked" not in str(exc):
                        raise

        threads = [threading.Thread(target=contend, args=(f"w{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [c for c in results if c is not None]
        assert len(results) == 4 and len(winners) == 1
        job = load(db_url, job_id)
        assert (job.status, job.attempts, job.lease_token) == (JobStatus.preparing, 1, winners[0].token)
        assert job.worker == winners[0].job.worker
        assert statuses(db_url, job_id) == ["preparing"]


def test_a_delivery_while_the_lease_is_live_does_nothing_and_one_after_it_ran_out_takes_over(db_url):
    job_id = make_job(db_url)
    first = claim(db_url, job_id, worker="a").claim
    assert first is not None
    assert claim(db_url, job_id, worker="b").claim is None  # a duplicate message: the lease is live
    assert load(db_url, job_id).worker == "a"

    expire(db_url, job_id)  # worker a is presumed dead
    second = claim(db_url, job_id, worker="b").claim
    assert second is not None and second.token != first.token
    assert load(db_url, job_id).attempts == 2

    # Worker a comes back: every write it tries is refused and leaves no trace.
    stale = JobLease(session_factory(db_url), job_id, first.token, lease_seconds=30)
    before = statuses(db_url, job_id)
    with pytest.raises(LeaseLost):
        stale.finish(JobStatus.succeeded)
    with pytest.raises(LeaseLost), stale.transaction() as session:
        session.add(JobEvent(job_id=job_id, type="progress", data={"step": 99}))
    assert statuses(db_url, job_id) == before
    assert load(db_url, job_id).status == JobStatus.preparing

    live = JobLease(session_factory(db_url), job_id, second.token, lease_seconds=30)
    live.finish(JobStatus.succeeded)
    job = load(db_url, job_id)
    assert (job.status, job.lease_token, job.lease_expires_at) == (JobStatus.succeeded, None, None)
    assert claim(db_url, job_id).claim is None  # finished: nothing to do


def test_renewal_moves_the_expiry_and_reports_a_cancel(db_url):
    job_id = make_job(db_url)
    claimed = claim(db_url, job_id, lease_seconds=5).claim
    lease = JobLease(session_factory(db_url), job_id, claimed.token, lease_seconds=120)
    lease.renew()
    assert not lease.cancel_requested
    remaining = load(db_url, job_id).lease_expires_at
    assert remaining is not None
    with session_factory(db_url)() as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
        session.commit()
    lease.renew()
    assert lease.cancel_requested


def test_a_handed_back_run_does_not_count_towards_max_attempts(db_url):
    job_id = make_job(db_url)
    for _ in range(3):
        claimed = claim(db_url, job_id, max_attempts=1).claim
        assert claimed is not None
        JobLease(session_factory(db_url), job_id, claimed.token, 30).hand_back("outage")
        job = load(db_url, job_id)
        assert (job.status, job.lease_token, job.enqueued_at) == (JobStatus.queued, None, None)
    job = load(db_url, job_id)
    assert (job.attempts, job.handed_back, job.lost_runs) == (3, 3, 0)

    claimed = claim(db_url, job_id, max_attempts=1).claim  # this run's worker dies
    expire(db_url, job_id)
    result = claim(db_url, job_id, max_attempts=1)
    assert result.claim is None and result.ended
    job = load(db_url, job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "too_many_attempts")
    assert "1 times" in job.error_message


def test_a_cancel_asked_for_before_the_claim_ends_the_job(db_url):
    job_id = make_job(db_url, cancel_requested=True)
    result = claim(db_url, job_id)
    assert result.claim is None and result.ended
    job = load(db_url, job_id)
    assert (job.status, job.attempts, job.lease_token) == (JobStatus.canceled, 0, None)


def test_an_unknown_job_is_dropped(db_url):
    assert claim(db_url, uuid.uuid4().hex).claim is None
