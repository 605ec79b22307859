"""The scheduler against a database of its own and the real Redis: it sends a queue no more jobs than its
live workers have free slots, in the order owners take turns, and within each key's limits."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from shared.db.keys import add_api_key
from shared.db.models import Job, JobStatus, utcnow
from shared.db.service_lock import try_lock
from shared.db.session import session_factory
from shared.jobs.scheduler import Scheduler
from shared.jobs.workers import record_heartbeat
from shared.queue import JobDispatcher, make_celery
from shared.settings import Settings
from tests.support import services
from tests.support.job_rows import load, make_job, queued_ids, running_job


def scheduler(settings: Settings, holder: str = "test") -> Scheduler:
    dispatcher = JobDispatcher(make_celery(settings), settings)
    return Scheduler(settings, session_factory(settings.database_url), dispatcher, holder=holder)


def worker_alive(settings: Settings, slots: int = 1, wid: str = "host:1", queues: str | None = None) -> None:
    with session_factory(settings.database_url)() as session:
        record_heartbeat(session, wid, queues or settings.queue_name, slots=slots)


def queued(settings: Settings, owner: str, minutes_ago: float, **fields) -> str:
    created = utcnow() - timedelta(minutes=minutes_ago)
    return make_job(settings, owner=owner, created_at=created, queue=settings.queue_name, **fields)


def finish(settings: Settings, job_id: str) -> None:
    """The worker took the job (it was sent) and finished it."""
    with session_factory(settings.database_url)() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.succeeded))
        session.commit()


def key_with(settings: Settings, owner: str, **limits) -> str:
    with session_factory(settings.database_url)() as session:
        row, _ = add_api_key(session, owner, limits=limits)
        session.commit()
        return row.id


def test_nothing_is_sent_until_a_worker_is_alive_then_only_its_free_slots(settings, broker):
    jobs = [queued(settings, "a", 10 - i) for i in range(4)]
    s = scheduler(settings)
    assert s.run_once() == []
    assert queued_ids(broker, settings.queue_name) == []
    worker_alive(settings, slots=2)
    assert s.run_once() == jobs[:2]
    assert s.run_once() == []  # both slots are taken by jobs sent and not yet started
    assert sorted(queued_ids(broker, settings.queue_name)) == sorted(jobs[:2])
    assert all(load(settings, j).enqueued_at is not None for j in jobs[:2])
    assert load(settings, jobs[2]).enqueued_at is None
    finish(settings, jobs[0])
    assert s.run_once() == [jobs[2]]


def test_a_running_job_holds_its_slot(settings, broker):
    running_job(settings, expired=False, queue=settings.queue_name)
    waiting = queued(settings, "a", 1)
    worker_alive(settings, slots=1)
    assert scheduler(settings).run_once() == []
    worker_alive(settings, slots=1, wid="host:2")
    assert scheduler(settings).run_once() == [waiting]


def test_on_one_worker_a_later_owner_does_not_wait_for_a_backlog(settings, broker):
    backlog = [queued(settings, "a", 30 - i) for i in range(3)]
    later = queued(settings, "b", 1)
    worker_alive(settings, slots=1)
    s = scheduler(settings)
    assert s.run_once() == [backlog[0]]
    finish(settings, backlog[0])
    assert s.run_once() == [later]  # a just had its turn; b never had one
    finish(settings, later)
    assert s.run_once() == [backlog[1]]


def test_a_keys_max_running_and_priority_rule_the_order(settings, broker):
    capped = key_with(settings, "a", max_running=1)
    urgent = key_with(settings, "c", priority=10)
    a1, a2 = queued(settings, "a", 30, api_key_id=capped), queued(settings, "a", 29, api_key_id=capped)
    b1 = queued(settings, "b", 20)
    c1 = queued(settings, "c", 1, api_key_id=urgent)
    worker_alive(settings, slots=4)
    sent = scheduler(settings).run_once()
    assert sent == [c1, a1, b1]  # priority first; a2 waits for a1 though a slot is free
    finish(settings, a1)
    assert scheduler(settings).run_once() == [a2]


def test_canceled_jobs_and_other_queues_are_left_alone(settings, broker):
    canceled = queued(settings, "a", 5, cancel_requested=True)
    elsewhere = make_job(settings, owner="a", queue="gpu-big")
    mine = queued(settings, "a", 1)
    worker_alive(settings, slots=5)
    assert scheduler(settings).run_once() == [mine]
    assert load(settings, canceled).enqueued_at is None and load(settings, elsewhere).enqueued_at is None
    worker_alive(settings, slots=1, wid="big:1", queues="gpu-big")
    assert scheduler(settings).run_once() == [elsewhere]


def test_one_scheduler_acts_at_a_time(settings, broker):
    queued(settings, "a", 2)
    worker_alive(settings, slots=1)
    b_first = scheduler(settings, holder="b")
    job_id = queued(settings, "a", 1)
    with session_factory(settings.database_url)() as session:
        assert try_lock(session, "scheduler", "a", ttl_seconds=60)
    assert b_first.run_once() == []  # "a" holds the lock
    assert load(settings, job_id).enqueued_at is None


def test_nothing_is_marked_sent_while_the_broker_is_down(settings):
    down = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{services.free_port()}/0"})
    job_id = queued(down, "a", 1)
    worker_alive(down, slots=1)
    assert scheduler(down).run_once() == []  # no exception: the next pass tries again
    assert load(down, job_id).enqueued_at is None
