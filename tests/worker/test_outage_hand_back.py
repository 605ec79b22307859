"""A storage outage longer than the worker's bound: training stops, the job goes back to the queue (not
counted as a lost run), its resume state stays, and the next run resumes from it and finishes."""

from __future__ import annotations

import threading
import time
import uuid
from urllib.parse import urlsplit

from sqlalchemy import select

from shared.config.spec import TrainingConfig
from shared.db.models import Artifact, Job, JobEvent, JobStatus
from shared.db.session import session_scope
from tests.support.datasets import zip_folder
from tests.support.faultproxy import FaultProxy
from tests.support.stack import settings_from_env, stack_env
from tests.worker.test_training_options import BASE, make_dataset
from worker.jobs.runner import JobRunner

CONFIG = TrainingConfig(
    **{**BASE, "batch_size": 1},
    output_name="o",
    epochs=30,
    network_dim=2,
    save_precision="float",
    save_every_n_epochs=1,
)


def row(pg_url: str, job_id: str) -> Job:
    with session_scope(pg_url) as session:
        job = session.get(Job, job_id)
        session.expunge(job)
        return job


def test_an_outage_past_the_bound_hands_the_job_back_and_it_resumes(
    pg_url, redis_url, s3_server, bucket, models_dir, tmp_path
):
    target = urlsplit(s3_server.url)
    proxy = FaultProxy(target.hostname, target.port).start()
    env = stack_env(
        pg_url=pg_url,
        redis_url=redis_url,
        s3_url=proxy.url_for(s3_server.url),
        bucket=bucket,
        data_dir=tmp_path / "data",
        models_dir=models_dir,
        outage_retry_seconds="2",
        progress_interval_seconds="0.05",
        s3_connect_timeout_seconds="1",
        s3_read_timeout_seconds="1",
    )
    runner = JobRunner(settings_from_env(env))
    runner.store.put_file("datasets/o.zip", zip_folder(make_dataset(tmp_path / "set"), tmp_path / "o.zip"))
    job_id = uuid.uuid4().hex
    with session_scope(pg_url) as session:
        session.add(
            Job(
                id=job_id,
                owner="t",
                config=CONFIG.model_dump(mode="json"),
                plan={},
                dataset_key="datasets/o.zip",
            )
        )
    try:
        first = threading.Thread(target=runner.run, args=(job_id,))
        first.start()
        deadline = time.monotonic() + 120
        while runner.read_resume_record(job_id) is None:  # epoch 1's state is up
            assert time.monotonic() < deadline and first.is_alive()
            time.sleep(0.05)
        proxy.refuse()
        first.join(timeout=120)
        assert not first.is_alive()
        job = row(pg_url, job_id)
        assert (job.status, job.lease_token, job.enqueued_at) == (JobStatus.queued, None, None)
        assert (job.attempts, job.handed_back, job.lost_runs) == (1, 1, 0)
        stopped_at = job.step
        assert 0 < stopped_at < 90  # training stopped at a step once the bound was past
        with session_scope(pg_url) as session:
            statuses = [
                e.data
                for e in session.scalars(
                    select(JobEvent)
                    .where(JobEvent.job_id == job_id, JobEvent.type == "status")
                    .order_by(JobEvent.id)
                )
            ]
        assert statuses[-1] == {"status": "queued", "reason": "outage"}
        proxy.restore()
        kept = runner.read_resume_record(job_id)
        assert kept is not None and kept["step"] >= 3  # not deleted: the job has not ended

        runner.run(job_id)  # the reconciler's message
        job = row(pg_url, job_id)
        assert (job.status, job.attempts, job.handed_back, job.step) == (JobStatus.succeeded, 2, 1, 90)
        names = [a.name for a in job_artifacts(pg_url, job_id)]
        assert names == [f"o-{e:06d}.safetensors" for e in range(1, 30)] + ["o.safetensors"]
        final = runner.read_resume_record(job_id)  # a succeeded job keeps its final state, to be continued
        assert final is not None and (final["step"], final["epoch"]) == (90, 30)
    finally:
        proxy.stop()


def job_artifacts(pg_url: str, job_id: str) -> list:
    with session_scope(pg_url) as session:
        rows = list(
            session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.epoch))
        )
        session.expunge_all()
        return rows
