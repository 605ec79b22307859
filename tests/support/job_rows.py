"""Job rows written straight to a test's database, and reading them and the broker back."""

from __future__ import annotations

import uuid
from datetime import timedelta

import redis
from sqlalchemy import update

from shared.broker_inspect import job_id_of
from shared.db.models import Job, utcnow
from shared.db.session import session_factory
from shared.jobs.leases import claim_job
from shared.settings import Settings


def make_job(settings: Settings, **fields) -> str:
    job_id = uuid.uuid4().hex
    fields.setdefault("owner", "t")
    with session_factory(settings.database_url)() as session:
        session.add(Job(id=job_id, config={}, plan={}, dataset_key="k", **fields))
        session.commit()
    return job_id


def running_job(settings: Settings, *, expired: bool = True, **fields) -> str:
    """A job claimed by a worker; with `expired` its lease has run out (the worker is gone)."""
    job_id = make_job(settings, **fields)
    claimed = claim_job(
        session_factory(settings.database_url), job_id, "w", lease_seconds=60, max_attempts=9
    ).claim
    assert claimed is not None
    if expired:
        with session_factory(settings.database_url)() as session:
            session.execute(
                update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=5))
            )
            session.commit()
    return job_id


def load(settings: Settings, job_id: str) -> Job:
    with session_factory(settings.database_url)() as session:
        job = session.get(Job, job_id)
        session.expunge(job)
        return job


def queued_ids(client: redis.Redis, queue: str) -> list[str]:
    return [job_id_of(raw) for raw in client.lrange(queue, 0, -1)]
