"""The job keeper and the publisher: training hands them its reports and files and never waits on a server.

The keeper talks to the real Postgres through a fault-injecting proxy, so the database can be taken away
and given back mid-run.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from shared.db.models import Job, JobEvent, JobStatus
from shared.db.session import session_factory
from shared.jobs.leases import JobLease, claim_job
from shared.settings import EngineOptions
from tests.support.faultproxy import FaultProxy
from tests.support.services import wait_until
from worker.jobs.keeper import JobKeeper
from worker.jobs.publisher import FileToPublish, PublishActions, Publisher


@pytest.fixture
def pg_proxy(pg_url) -> Iterator[FaultProxy]:
    target = urlsplit(pg_url.replace("postgresql+psycopg", "postgresql"))
    proxy = FaultProxy(target.hostname, target.port).start()
    yield proxy
    proxy.stop()


def claimed_lease(url: str, lease_seconds: float = 30) -> JobLease:
    job_id = uuid.uuid4().hex
    with session_factory(url)() as session:
        session.add(Job(id=job_id, owner="t", config={}, plan={}, dataset_key="k"))
        session.commit()
    claim = claim_job(session_factory(url), job_id, "w", lease_seconds=lease_seconds, max_attempts=3).claim
    assert claim is not None
    options = EngineOptions(connect_timeout=1, pool_timeout=2)
    return JobLease(session_factory(url, options), job_id, claim.token, lease_seconds)


def row(url: str, job_id: str) -> Job:
    with session_factory(url)() as session:
        job = session.get(Job, job_id)
        session.expunge(job)
        return job


def progress_steps(url: str, job_id: str) -> list[int]:
    with session_factory(url)() as session:
        events = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "progress")
        )
        return [e.data["step"] for e in events]


def progress(step: int) -> dict:
    return {"step": step, "total_steps": 100, "epoch": 1, "total_epochs": 1, "loss": 0.1}


def test_reports_are_coalesced_and_the_newest_one_lands(pg_url):
    lease = claimed_lease(pg_url)
    keeper = JobKeeper(lease, renew_every=1, write_every=0.2, outage_bound=30).start()
    try:
        keeper.add_event("stage", {"stage": "training"})
        keeper.set_status(JobStatus.training)
        for step in range(1, 101):
            keeper.report_progress(progress(step))
            time.sleep(0.005)
        keeper.flush()
    finally:
        keeper.stop()
    job = row(pg_url, lease.job_id)
    assert (job.status, job.step) == (JobStatus.training, 100)
    steps = progress_steps(pg_url, lease.job_id)
    assert steps[-1] == 100 and len(steps) < 20 and steps == sorted(steps)  # throttled, in order


def test_training_goes_on_while_the_database_is_away_and_the_newest_progress_lands_after(pg_url, pg_proxy):
    url = pg_proxy.url_for(pg_url)
    lease = claimed_lease(url)
    keeper = JobKeeper(lease, renew_every=0.5, write_every=0.1, outage_bound=30).start()
    try:
        keeper.report_progress(progress(1))
        wait_until(lambda: row(pg_url, lease.job_id).step == 1, 10, "first progress")
        pg_proxy.refuse()
        started = time.monotonic()
        for step in range(2, 51):  # reports never block, whatever the database does
            keeper.report_progress(progress(step))
        assert time.monotonic() - started < 0.1
        time.sleep(2)
        assert row(pg_url, lease.job_id).step == 1 and not keeper.must_stop
        pg_proxy.restore()
        wait_until(lambda: row(pg_url, lease.job_id).step == 50, 15, "progress after the outage")
        assert not keeper.lease_lost and keeper.outage is None
    finally:
        keeper.stop()
    assert progress_steps(pg_url, lease.job_id)[-1] == 50


def test_an_outage_past_the_bound_makes_training_stop(pg_url, pg_proxy):
    url = pg_proxy.url_for(pg_url)
    lease = claimed_lease(url)
    keeper = JobKeeper(lease, renew_every=0.3, write_every=0.1, outage_bound=1.0).start()
    try:
        keeper.report_progress(progress(1))
        pg_proxy.refuse()
        wait_until(lambda: keeper.must_stop, 15, "the keeper giving up")
        assert keeper.outage is not None and keeper.outage.service == "database"
        assert not keeper.lease_lost
    finally:
        pg_proxy.restore()
        keeper.stop()


# --- the publisher -----------------------------------------------------------------------------------------


def file(tmp_path: Path, name: str, data: bytes = b"x") -> Path:
    path = tmp_path / "out" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_the_publisher_keeps_the_order_and_a_newer_state_replaces_a_waiting_one(tmp_path):
    done: list[tuple] = []
    gate = {"open": False}

    def publish(item: FileToPublish) -> None:
        while not gate["open"]:  # storage is slow: items queue up behind the first
            time.sleep(0.01)
        done.append(("file", item.name, item.path.read_bytes()))

    actions = PublishActions(
        publish=publish,
        remove=lambda name: done.append(("remove", name)),
        save_state=lambda path, epoch, step: done.append(("state", step, path.read_bytes())),
    )
    publisher = Publisher(actions, tmp_path / "spool").start()
    try:
        first = file(tmp_path, "a-000001.safetensors", b"epoch 1")
        publisher.publish(first, kind="lora", epoch=1, step=4)
        first.unlink()  # training removes its copy at once (keep-last-N): the spooled one is published
        publisher.save_state(file(tmp_path, "state.pt", b"state 4"), epoch=1, step=4)
        publisher.publish(file(tmp_path, "a-000002.safetensors", b"epoch 2"), kind="lora", epoch=2, step=8)
        publisher.remove("a-000001.safetensors")
        publisher.save_state(file(tmp_path, "state.pt", b"state 8"), epoch=2, step=8)
        gate["open"] = True
        publisher.drain()
    finally:
        publisher.close()
    assert done == [
        ("file", "a-000001.safetensors", b"epoch 1"),
        ("file", "a-000002.safetensors", b"epoch 2"),
        ("remove", "a-000001.safetensors"),
        ("state", 8, b"state 8"),  # the state of step 4 was superseded before it went up
    ]
    assert list((tmp_path / "spool").iterdir()) == []


def test_the_first_item_that_fails_stops_the_publisher_and_drain_raises_it(tmp_path):
    done: list[str] = []

    def publish(item: FileToPublish) -> None:
        if item.name == "bad.png":
            raise RuntimeError("storage refused it")
        done.append(item.name)

    actions = PublishActions(publish=publish, remove=done.append, save_state=lambda *a: done.append("state"))
    publisher = Publisher(actions, tmp_path / "spool").start()
    try:
        publisher.publish(file(tmp_path, "good.png"), kind="sample")
        publisher.publish(file(tmp_path, "bad.png"), kind="sample")
        publisher.publish(file(tmp_path, "later.png"), kind="sample")
        with pytest.raises(RuntimeError, match="refused"):
            publisher.drain()
        assert isinstance(publisher.failure, RuntimeError)
    finally:
        publisher.close()
    assert done == ["good.png"]
