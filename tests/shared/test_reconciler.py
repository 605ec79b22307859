"""The reconciler against a database of its own (it acts on every job it sees), the real Redis and a local
object store: it brings back jobs of dead workers, re-sends what the broker lost, one acts at a time."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

from sqlalchemy import select, update

from shared.broker_inspect import job_id_of, jobs_in_broker
from shared.db.models import Job, JobEvent, JobStatus, as_utc, utcnow
from shared.db.session import session_factory
from shared.jobs.reconciler import Reconciler, ReconcileReport
from shared.jobs.scheduler import Scheduler
from shared.jobs.workers import record_heartbeat
from shared.queue import JobDispatcher, make_celery
from shared.settings import Settings
from shared.storage import LocalStore, resume_state_prefix
from tests.support import services
from tests.support.job_rows import load, make_job, queued_ids, running_job


def reconciler(settings: Settings, holder: str = "test", store: LocalStore | None = None) -> Reconciler:
    dispatcher = JobDispatcher(make_celery(settings), settings)
    return Reconciler(settings, session_factory(settings.database_url), dispatcher, store, holder=holder)


def test_a_dead_workers_job_is_queued_again_and_the_scheduler_sends_it(settings, broker):
    job_id = running_job(settings)
    live = running_job(settings, expired=False)
    report = ReconcileReport()
    r = reconciler(settings)
    r.take_back_expired(report)
    r.send_lost(report)
    assert report.requeued == [job_id] and report.sent == []  # waiting: sending it is the scheduler's
    job = load(settings, job_id)
    assert (job.status, job.lease_token, job.attempts, job.lost_runs) == (JobStatus.queued, None, 1, 1)
    assert job.enqueued_at is None
    with session_factory(settings.database_url)() as session:  # a worker with a free slot (the other one
        record_heartbeat(session, "host:1", settings.queue_name, slots=2)  # runs `live`)
    assert Scheduler(settings, r.sessions, r.dispatcher, holder="test").run_once() == [job_id]
    assert load(settings, job_id).enqueued_at is not None
    assert queued_ids(broker, settings.queue_name) == [job_id]
    assert load(settings, live).status == JobStatus.preparing  # its lease is live: left alone
    with session_factory(settings.database_url)() as session:
        last = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc())
        ).first()
    assert last.data == {"status": "queued", "reason": "worker_lost"}


def test_a_job_that_keeps_losing_its_worker_fails_and_its_resume_state_goes(settings, broker, tmp_path):
    store = LocalStore(tmp_path / "objects")
    job_id = running_job(settings, attempts=1)  # this claim is its 2nd start; both workers died
    state = tmp_path / "state.pt"
    state.write_bytes(b"state")
    store.put_file(resume_state_prefix(job_id) + "latest", state)
    report = ReconcileReport()
    reconciler(settings, store=store).take_back_expired(report)
    job = load(settings, job_id)
    assert report.ended == [job_id]
    assert (job.status, job.error_code) == (JobStatus.failed, "too_many_attempts")
    assert "stopped 2 times" in job.error_message
    assert store.list_keys(resume_state_prefix(job_id)) == []


def test_a_job_whose_cancel_was_asked_for_is_canceled_when_its_worker_is_gone(settings, broker):
    job_id = running_job(settings)
    with session_factory(settings.database_url)() as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
        session.commit()
    reconciler(settings).take_back_expired(ReconcileReport())
    assert load(settings, job_id).status == JobStatus.canceled


def test_leases_are_left_alone_until_the_database_was_up_for_a_lease_length(settings, broker):
    """A reconciler that just (re)gained the database waits: workers that lived through the same outage
    renew first."""
    job_id = running_job(settings)
    r = reconciler(settings)
    first = r.run_once()
    assert first.requeued == [] and load(settings, job_id).status == JobStatus.preparing
    time.sleep(settings.lease_seconds + 0.1)
    assert r.run_once().requeued == [job_id]


def test_one_reconciler_acts_at_a_time(settings, broker):
    a, b = reconciler(settings, holder="a"), reconciler(settings, holder="b")
    assert a.run_once().skipped is None
    assert b.run_once().skipped == "another process holds the reconciler lock"
    assert a.run_once().skipped is None  # the holder renews it


def test_jobs_the_broker_lost_are_sent_again_and_the_others_are_not(settings, broker):
    old = utcnow() - timedelta(seconds=10)
    lost = make_job(settings, enqueued_at=old)
    waiting = make_job(settings, enqueued_at=old)
    never_sent = make_job(settings, enqueued_at=None)
    just_sent = make_job(settings, enqueued_at=utcnow() + timedelta(seconds=60))
    unacked_lost = make_job(settings, enqueued_at=old)
    dispatcher = JobDispatcher(make_celery(settings), settings)
    # A message delivered long ago to a consumer that died before claiming its job counts as lost too.
    assert dispatcher.send(unacked_lost)
    message = broker.lpop(settings.queue_name)
    assert job_id_of(message) == unacked_lost
    stale_tag = f"tag-{uuid.uuid4().hex}"
    broker.hset("unacked", stale_tag, json.dumps([json.loads(message), "", settings.queue_name]))
    broker.zadd("unacked_index", {stale_tag: time.time() - 60})
    assert dispatcher.send(waiting)
    try:
        assert jobs_in_broker(settings, stale_after=30) >= {waiting}
        assert unacked_lost in jobs_in_broker(settings, stale_after=120)  # delivered 60 s ago: still fresh
        report = ReconcileReport()
        reconciler(settings).send_lost(report)
    finally:
        broker.hdel("unacked", stale_tag)
        broker.zrem("unacked_index", stale_tag)
    assert sorted(report.sent) == sorted([lost, unacked_lost])  # never_sent waits for the scheduler
    assert sorted(queued_ids(broker, settings.queue_name)) == sorted([waiting, lost, unacked_lost])
    assert load(settings, never_sent).enqueued_at is None
    assert load(settings, just_sent).enqueued_at > utcnow()  # not due: untouched
    assert load(settings, lost).enqueued_at > old


def test_nothing_is_sent_again_while_the_broker_is_down(settings):
    down = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{services.free_port()}/0"})
    old = utcnow() - timedelta(seconds=10)
    job_id = make_job(down, enqueued_at=old)
    report = ReconcileReport()
    reconciler(down).send_lost(report)  # no exception: the next pass tries again
    assert report.sent == [] and as_utc(load(down, job_id).enqueued_at) == old
