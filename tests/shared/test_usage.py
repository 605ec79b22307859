"""The usage ledger, storage held and quotas against the real databases: a repeated write adds nothing, a
resumed run counts its seconds but not the steps it trains again, a run whose lease moved on adds nothing,
expired rows hold no storage, and a quota names itself, its limit and the use."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.migrate import upgrade
from shared.db.models import Artifact, Dataset, Job, JobKind, UsageRecord, utcnow
from shared.db.session import get_engine, session_factory
from shared.jobs.leases import JobLease, LeaseLost, claim_job
from shared.usage.ledger import RunUsage, record_job_usage
from shared.usage.quotas import QuotaExceeded, check_quotas, quota_uses
from shared.usage.reads import gpu_seconds_this_month, usage_periods
from shared.usage.storage import StorageHeld, forget_resume_state, owner_storage
from tests.support import services


@pytest.fixture(scope="module")
def pg() -> Iterator[str]:
    with services.migrated_database() as url:
        yield url


@pytest.fixture(params=["postgres", "sqlite"])
def sessions(request, pg, tmp_path) -> Iterator[sessionmaker[Session]]:
    url = pg if request.param == "postgres" else f"sqlite:///{tmp_path / 'usage.db'}"
    if request.param == "sqlite":
        upgrade(url)
    yield session_factory(url)
    if request.param == "sqlite":
        get_engine(url).dispose()


def new_job(sessions: sessionmaker[Session], owner: str, kind: str = JobKind.train, **fields) -> str:
    job_id = uuid.uuid4().hex
    fields.setdefault("dataset_key", f"jobs/{job_id}/dataset.zip")
    with sessions() as session:
        session.add(Job(id=job_id, owner=owner, kind=kind, config={}, plan={}, **fields))
        session.commit()
    return job_id


def write(sessions: sessionmaker[Session], job_id: str, usage: RunUsage, day: date | None = None):  # noqa: ANN201
    with sessions() as session:
        added = record_job_usage(session, job_id, usage, day=day)
        session.commit()
    return added


def ledger(sessions: sessionmaker[Session], owner: str) -> list[tuple]:
    with sessions() as session:
        return [
            (r.day, r.kind, r.gpu, round(r.gpu_seconds, 6), r.steps_trained, r.images_captioned)
            for r in session.scalars(
                select(UsageRecord).where(UsageRecord.owner == owner).order_by(UsageRecord.day)
            )
        ]


def test_repeats_add_nothing_and_a_resumed_run_counts_its_seconds_but_not_its_steps_again(sessions):
    owner = f"u-{uuid.uuid4().hex[:8]}"
    job_id = new_job(sessions, owner)
    day = date(2026, 3, 31)

    def run(token: str, seconds: float, steps: int) -> RunUsage:
        return RunUsage(owner, "train", "NVIDIA H100", token, seconds, steps_trained=steps)

    assert write(sessions, job_id, run("a", 10.0, 5), day)
    assert not write(sessions, job_id, run("a", 10.0, 5), day)  # the same report again (a retried commit)
    write(sessions, job_id, run("a", 12.0, 8), day)
    # the first run died after step 8; the next resumes from its state at step 6 and trains 6..10
    resumed = write(sessions, job_id, run("b", 4.0, 6), day)
    assert (resumed.gpu_seconds, resumed.steps_trained) == (4.0, 0)
    write(sessions, job_id, run("b", 9.0, 10), date(2026, 4, 1))  # past midnight: the next day's row
    assert ledger(sessions, owner) == [
        (date(2026, 3, 31), "train", "NVIDIA H100", 16.0, 8, 0),
        (date(2026, 4, 1), "train", "NVIDIA H100", 5.0, 2, 0),
    ]
    # a caption job of the same owner on another card: rows of their own, summed by month
    caption = new_job(sessions, owner, JobKind.caption)
    write(
        sessions, caption, RunUsage(owner, "caption", "cpu", "c", 3.0, images_captioned=7), date(2026, 4, 2)
    )
    with sessions() as session:
        by_month = usage_periods(session, owner, date(2026, 3, 1), date(2026, 4, 30), "month")
        by_day = usage_periods(session, owner, date(2026, 4, 1), date(2026, 4, 30), "day")
        april = gpu_seconds_this_month(session, owner, datetime(2026, 4, 15, tzinfo=UTC))
    assert [(p.start, p.totals.gpu_seconds, p.totals.steps_trained) for p in by_month] == [
        (date(2026, 3, 1), 16.0, 8),
        (date(2026, 4, 1), 8.0, 2),
    ]
    assert by_month[1].by_kind_and_gpu[("caption", "cpu")].images_captioned == 7
    # a job that starts from another's state at step 48 (a continued LoRA) counts only the steps it trains
    continued = new_job(sessions, owner)
    first = RunUsage(owner, "train", "cpu", "d", 1.0, steps_trained=50, first_step=48)
    assert write(sessions, continued, first, date(2026, 5, 1)).steps_trained == 2
    assert [p.start for p in by_day] == [date(2026, 4, 1), date(2026, 4, 2)]  # March is out of the range
    assert april == 8.0  # the calendar month in UTC: March's 16 s are not April's


def test_a_run_whose_lease_moved_on_adds_nothing_and_keeps_what_it_wrote(pg):
    sessions = session_factory(pg)
    owner = f"u-{uuid.uuid4().hex[:8]}"
    job_id = new_job(sessions, owner)
    claim = claim_job(sessions, job_id, "w1", lease_seconds=60, max_attempts=3).claim
    assert claim is not None
    lease = JobLease(sessions, job_id, claim.token, 60)
    with lease.transaction() as session:
        record_job_usage(session, job_id, RunUsage(owner, "train", "cpu", claim.token, 5.0, steps_trained=3))
    with sessions() as session:  # the reconciler presumed the worker dead and gave the job to another
        session.get(Job, job_id).lease_token = uuid.uuid4().hex
        session.commit()
    with pytest.raises(LeaseLost), lease.transaction() as session:
        record_job_usage(
            session, job_id, RunUsage(owner, "train", "cpu", claim.token, 50.0, steps_trained=30)
        )
    assert [row[3:5] for row in ledger(sessions, owner)] == [(5.0, 3)]


def test_storage_held_counts_real_sizes_and_leaves_out_what_expired_or_is_shared(pg):
    sessions = session_factory(pg)
    owner = f"u-{uuid.uuid4().hex[:8]}"
    with sessions() as session:
        for size, expired in ((100, None), (1000, utcnow())):
            session.add(
                Dataset(owner=owner, object_key="d", bytes=size, layout={}, report={}, expired_at=expired)
            )
        session.commit()
    own_copy = new_job(sessions, owner, dataset_bytes=50, resume_state_bytes=20)
    new_job(sessions, owner, dataset_key="datasets/x/dataset.zip", dataset_bytes=100)  # the stored dataset's
    gone = new_job(sessions, owner, dataset_bytes=5000, resume_state_bytes=5000, expired_at=utcnow())
    with sessions() as session:
        for job_id, kind, size, expired in (
            (own_copy, "lora", 30, None),
            (own_copy, "sample", 7, None),
            (own_copy, "grid", 9, utcnow()),  # retention deleted it
            (gone, "lora", 5000, None),
        ):
            name = f"{kind}-{size}"
            session.add(
                Artifact(
                    job_id=job_id,
                    kind=kind,
                    name=name,
                    object_key=name,
                    size_bytes=size,
                    sha256="0" * 64,
                    expired_at=expired,
                )
            )
        session.commit()
        held = owner_storage(session, owner)
    assert held == StorageHeld(
        datasets_bytes=100, job_datasets_bytes=50, files_bytes=30, samples_bytes=7, resume_state_bytes=20
    )
    assert held.total_bytes == 207
    forget_resume_state(sessions, own_copy)  # its resume state was deleted from storage
    with sessions() as session:
        assert owner_storage(session, owner).resume_state_bytes == 0


def test_quotas_name_themselves_their_limit_and_the_use(pg):
    sessions = session_factory(pg)
    owner = f"u-{uuid.uuid4().hex[:8]}"
    job_id = new_job(sessions, owner, dataset_bytes=100)
    now = datetime.now(UTC)
    write(sessions, job_id, RunUsage(owner, "train", "cpu", "a", 30.0), now.date())
    with sessions() as session:
        check_quotas(session, owner, {})  # none set: nothing to check
        check_quotas(session, owner, {"gpu_seconds_per_month": 31, "storage_bytes": 110}, adding_bytes=10)
        with pytest.raises(QuotaExceeded) as gpu:
            check_quotas(session, owner, {"gpu_seconds_per_month": 30})
        with pytest.raises(QuotaExceeded) as storage:
            check_quotas(session, owner, {"storage_bytes": 110}, adding_bytes=11)
        with pytest.raises(QuotaExceeded) as full:
            check_quotas(session, owner, {"storage_bytes": 100})  # at the limit: anything more passes it
        uses = quota_uses(session, owner, {"gpu_seconds_per_month": 60, "storage_bytes": 1000})
    assert (gpu.value.status_code, gpu.value.code) == (429, "quota_exceeded")
    details = gpu.value.details
    assert (details["quota"], details["limit"], details["used"]) == ("gpu_seconds_per_month", 30, 30.0)
    resets = datetime.fromisoformat(details["resets_at"])
    assert resets > now and resets.day == 1 and (resets.hour, resets.minute) == (0, 0)
    assert 0 < gpu.value.retry_after <= 31 * 86400
    assert storage.value.details == {"quota": "storage_bytes", "limit": 110, "used": 100, "adding": 11}
    assert full.value.details == {"quota": "storage_bytes", "limit": 100, "used": 100}
    assert [(u.quota, u.limit, u.used) for u in uses] == [
        ("gpu_seconds_per_month", 60.0, 30.0),
        ("storage_bytes", 1000.0, 100.0),
    ]
