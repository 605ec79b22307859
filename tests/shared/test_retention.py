"""Retention against a database of its own (the sweeper acts on every job it sees) and a real object store:
finished jobs past their date lose their objects and are marked, with a `job.expired` event; running jobs,
jobs inside their retention, jobs a comparison reads and datasets a live job uses keep theirs; a storage
outage in the middle of a pass leaves nothing marked that still has objects, and the next pass finishes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select, update

from shared.db.models import (
    Artifact,
    Dataset,
    DatasetImage,
    Job,
    JobEvent,
    JobKind,
    JobStatus,
    WebhookDelivery,
    WebhookEndpoint,
    as_utc,
    new_id,
    utcnow,
)
from shared.db.session import session_factory
from shared.errors import LorabakeError
from shared.jobs.retention import Expired, check_dataset, check_job_files, job_retention_days
from shared.jobs.state import set_status
from shared.jobs.sweeper import RetentionSweeper
from shared.resources import JobOut
from shared.settings import Settings
from shared.storage import LocalStore, ObjectStore, S3Store, resume_state_prefix
from shared.webhooks.events import webhook_type
from shared.webhooks.fanout import fan_out
from tests.support.faultproxy import FaultProxy

DAY = timedelta(days=1)


def test_a_jobs_retention_is_its_own_or_the_default_within_the_keys_maximum():
    assert job_retention_days(None, 30, None) == 30
    assert job_retention_days(None, 0, None) == 0  # the deployment keeps everything
    assert job_retention_days(7, 30, None) == 7
    assert job_retention_days(0, 30, None) == 0  # a job may ask to be kept forever where no key limits it
    assert job_retention_days(None, 0, 14) == 14  # forever is past the key's maximum: its maximum
    assert job_retention_days(None, 30, 14) == 14
    assert job_retention_days(None, 7, 14) == 7
    assert job_retention_days(14, 0, 14) == 14
    for asked in (15, 0):
        with pytest.raises(LorabakeError) as refused:
            job_retention_days(asked, 30, 14)
        assert refused.value.status_code == 422
        assert refused.value.details == {"field": "config.retention_days", "max_retention_days": 14}


def _put(store: ObjectStore, tmp_path: Path, key: str) -> None:
    path = tmp_path / "object"
    path.write_bytes(b"bytes of " + key.encode())
    store.put_file(key, path)


def _finished_job(
    settings: Settings,
    store: ObjectStore,
    tmp_path: Path,
    *,
    retention_days: int | None,
    finished_ago: timedelta,
    status: JobStatus = JobStatus.succeeded,
    **fields,
) -> str:
    """A training job with a dataset copy, a LoRA, a sample and resume state in storage, finished (through
    set_status, which dates its expiry) `finished_ago`."""
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        job = Job(owner="t", config={}, plan={}, dataset_key="", retention_days=retention_days, **fields)
        job.status = JobStatus.training
        session.add(job)
        session.flush()
        job.dataset_key = f"jobs/{job.id}/dataset.zip"
        for kind, name in (("lora", "lora.safetensors"), ("sample", "sample.png")):
            key = f"jobs/{job.id}/artifacts/tok/{name}"
            job.artifacts.append(
                Artifact(kind=kind, name=name, object_key=key, size_bytes=10, sha256="0" * 64)
            )
            _put(store, tmp_path, key)
        _put(store, tmp_path, job.dataset_key)
        _put(store, tmp_path, resume_state_prefix(job.id) + "latest")
        if status.is_terminal:
            set_status(session, job, status)
            if retention_days:
                assert job.expires_at == job.finished_at + timedelta(days=retention_days)
            else:
                assert job.expires_at is None  # kept forever, or the default of the day (the sweeper's)
            job.finished_at -= finished_ago
            job.expires_at = job.expires_at - finished_ago if job.expires_at else None
        session.commit()
        return job.id


def _job(settings: Settings, job_id: str) -> Job:
    with session_factory(settings.database_url)() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.artifacts  # noqa: B018 -- loaded before the session closes
        session.expunge_all()
        return job


def _expired_events(settings: Settings, job_id: str) -> list[JobEvent]:
    with session_factory(settings.database_url)() as session:
        return list(
            session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "expired"))
        )


def _assert_swept(settings: Settings, store: ObjectStore, job_id: str) -> None:
    assert store.list_keys(f"jobs/{job_id}/") == []  # files, samples, dataset copy, resume state
    job = _job(settings, job_id)
    assert job.expired_at is not None and job.expires_at is not None
    assert all(a.expired_at is not None for a in job.artifacts)  # storage usage counts unmarked rows only
    out = JobOut.of(job)
    assert out.expired_at is not None and all(a.expired_at is not None for a in out.artifacts)
    (event,) = _expired_events(settings, job_id)  # exactly one, however many passes ran
    assert webhook_type(event) == "job.expired"
    assert event.data["expires_at"] == as_utc(job.expires_at).isoformat()
    with pytest.raises(Expired) as gone:
        check_job_files(job, job.artifacts[0])
    assert gone.value.status_code == 410
    assert as_utc(job.expires_at).date().isoformat() in gone.value.message


def _assert_kept(settings: Settings, store: ObjectStore, job_id: str) -> None:
    assert len(store.list_keys(f"jobs/{job_id}/")) == 4
    job = _job(settings, job_id)
    assert job.expired_at is None and all(a.expired_at is None for a in job.artifacts)
    assert _expired_events(settings, job_id) == []


def test_finished_jobs_past_their_retention_are_swept_and_the_others_kept(settings, tmp_path):
    settings = settings.model_copy(update={"retention_days": 30})  # the default, for jobs from before it
    store = LocalStore(tmp_path / "objects")
    make = {"settings": settings, "store": store, "tmp_path": tmp_path}
    past = _finished_job(**make, retention_days=3, finished_ago=4 * DAY, status=JobStatus.failed)
    inside = _finished_job(**make, retention_days=3, finished_ago=2 * DAY)
    forever = _finished_job(**make, retention_days=0, finished_ago=400 * DAY)
    from_before = _finished_job(**make, retention_days=None, finished_ago=31 * DAY)
    running = _finished_job(**make, retention_days=1, finished_ago=DAY, status=JobStatus.training)
    with session_factory(settings.database_url)() as session:  # a job running again keeps a past date
        session.execute(update(Job).where(Job.id == running).values(expires_at=utcnow() - 9 * DAY))
        session.commit()
    compared = _finished_job(**make, retention_days=3, finished_ago=4 * DAY)
    with session_factory(settings.database_url)() as session:  # a comparison of it waits for a worker
        comparison = Job(
            owner="t",
            kind=JobKind.compare,
            dataset_key="",
            config={"source_job_id": compared, "epochs": [{"job_id": compared, "epoch": 1}]},
            plan={"source_job_id": compared},
        )
        session.add(comparison)
        session.commit()
        comparison_id = comparison.id

    sweeper = RetentionSweeper(settings, session_factory(settings.database_url), store, holder="a")
    report = sweeper.run_once()
    assert sorted(report.jobs) == sorted([past, from_before]) and report.skipped is None
    for job_id in (past, from_before):
        _assert_swept(settings, store, job_id)
    with session_factory(settings.database_url)() as session:  # the event goes to webhooks as job.expired
        session.add(WebhookEndpoint(owner="t", url="https://hooks.example.com/x", events=["job.expired"]))
        session.commit()
        while fan_out(session, store, timedelta(seconds=10)):
            pass
        sent = session.execute(select(WebhookDelivery.job_id, WebhookDelivery.event_type)).all()
    assert sorted(sent) == sorted([(past, "job.expired"), (from_before, "job.expired")])
    assert (
        as_utc(_job(settings, from_before).expires_at)
        == as_utc(_job(settings, from_before).finished_at) + 30 * DAY
    )
    for job_id in (inside, forever, running, compared):
        _assert_kept(settings, store, job_id)
    other = RetentionSweeper(settings, session_factory(settings.database_url), store, holder="b")
    assert other.run_once().skipped == "another process holds the retention lock"

    with session_factory(settings.database_url)() as session:
        job = session.get(Job, comparison_id)
        set_status(session, job, JobStatus.succeeded)
        session.commit()
    assert sweeper.run_once().jobs == [compared]  # the comparison ended: its source goes now
    _assert_swept(settings, store, compared)
    _assert_kept(settings, store, inside)
    assert sweeper.run_once().jobs == []  # nothing twice


def _dataset(
    settings: Settings, store: ObjectStore, tmp_path: Path, *, changed_ago: timedelta, jobs: list[dict]
) -> str:
    with session_factory(settings.database_url)() as session:
        changed = utcnow() - changed_ago
        dataset_id = new_id()  # set once: a later change would move updated_at
        dataset = Dataset(
            id=dataset_id,
            owner="t",
            object_key=f"datasets/{dataset_id}/dataset.zip",
            layout={"subsets": []},
            report={},
            created_at=changed,
            updated_at=changed,
        )
        session.add(dataset)
        session.flush()
        thumb = f"datasets/{dataset.id}/thumbs/a.jpg"
        session.add(
            DatasetImage(
                dataset_id=dataset.id,
                path="a.png",
                subset="img",
                width=8,
                height=8,
                format="PNG",
                content_sha256="0" * 64,
                thumbnail_key=thumb,
            )
        )
        for fields in jobs:
            session.add(
                Job(
                    owner="t",
                    config={},
                    plan={},
                    dataset_key=dataset.object_key,
                    dataset_id=dataset.id,
                    **fields,
                )
            )
        session.commit()
        for key in (dataset.object_key, thumb):
            _put(store, tmp_path, key)
        return dataset.id


def test_datasets_no_live_job_uses_are_swept_after_their_retention(settings, tmp_path):
    settings = settings.model_copy(update={"retention_days": 30})
    store = LocalStore(tmp_path / "objects")
    make = {"settings": settings, "store": store, "tmp_path": tmp_path}
    now = utcnow()
    long_ago = {"status": JobStatus.succeeded, "finished_at": now - 35 * DAY, "expired_at": now - 5 * DAY}
    unused = _dataset(**make, changed_ago=40 * DAY, jobs=[])
    jobs_expired = _dataset(**make, changed_ago=40 * DAY, jobs=[long_ago])
    changed_lately = _dataset(**make, changed_ago=10 * DAY, jobs=[])
    queued_job = _dataset(**make, changed_ago=40 * DAY, jobs=[long_ago, {"status": JobStatus.queued}])
    unexpired_job = _dataset(
        **make, changed_ago=40 * DAY, jobs=[{"status": JobStatus.succeeded, "finished_at": now - 35 * DAY}]
    )
    used_lately = _dataset(  # its job expired (a short retention of its own) but finished 2 days ago
        **make,
        changed_ago=40 * DAY,
        jobs=[{"status": JobStatus.succeeded, "finished_at": now - 2 * DAY, "expired_at": now - DAY}],
    )

    report = RetentionSweeper(settings, session_factory(settings.database_url), store, holder="a").run_once()
    assert sorted(report.datasets) == sorted([unused, jobs_expired])
    with session_factory(settings.database_url)() as session:
        for dataset_id in (unused, jobs_expired):
            assert store.list_keys(f"datasets/{dataset_id}/") == []
            dataset = session.get(Dataset, dataset_id)
            assert dataset.expired_at is not None and dataset.images  # the record stays
            with pytest.raises(Expired):
                check_dataset(dataset)
        for dataset_id in (changed_lately, queued_job, unexpired_job, used_lately):
            assert len(store.list_keys(f"datasets/{dataset_id}/")) == 2
            assert session.get(Dataset, dataset_id).expired_at is None


class _StorageGoesDownAfterOneDeletion(S3Store):
    """The real S3 store, behind a proxy that stops answering right after the first deletion."""

    def __init__(self, settings: Settings, proxy: FaultProxy) -> None:
        super().__init__(settings)
        self.proxy = proxy

    def delete_prefix(self, prefix: str) -> None:
        super().delete_prefix(prefix)
        self.proxy.refuse()


def test_a_storage_outage_mid_sweep_marks_nothing_and_the_next_pass_finishes(
    settings, tmp_path, s3_server, bucket
):
    target = urlsplit(s3_server.url)
    proxy = FaultProxy(target.hostname, target.port).start()
    s3 = {
        "storage_backend": "s3",
        "s3_bucket": bucket,
        "s3_access_key_id": s3_server.access_key,
        "s3_secret_access_key": s3_server.secret_key,
        "s3_connect_timeout_seconds": 1.0,
    }
    direct = S3Store(settings.model_copy(update={**s3, "s3_endpoint_url": s3_server.url}))
    proxied = settings.model_copy(update={**s3, "s3_endpoint_url": proxy.url_for(s3_server.url)})
    try:
        make = {"settings": settings, "store": direct, "tmp_path": tmp_path}
        first = _finished_job(**make, retention_days=1, finished_ago=5 * DAY)
        second = _finished_job(**make, retention_days=1, finished_ago=4 * DAY)
        sessions = session_factory(settings.database_url)

        failing = _StorageGoesDownAfterOneDeletion(proxied, proxy)
        report = RetentionSweeper(settings, sessions, failing, holder="a").run_once()
        assert report.skipped == "storage unavailable" and report.jobs == []
        assert direct.list_keys(resume_state_prefix(first)) == []  # what went before the outage
        assert len(direct.list_keys(f"jobs/{first}/")) == 3  # its files, samples and dataset copy stayed
        for job_id in (first, second):  # nothing is marked expired while it has objects
            job = _job(settings, job_id)
            assert job.expired_at is None and all(a.expired_at is None for a in job.artifacts)
            assert _expired_events(settings, job_id) == []
        _assert_kept(settings, direct, second)

        proxy.restore()
        report = RetentionSweeper(settings, sessions, S3Store(proxied), holder="a").run_once()
        assert report.jobs == [first, second] and report.skipped is None
        for job_id in (first, second):
            _assert_swept(settings, direct, job_id)
    finally:
        proxy.stop()
