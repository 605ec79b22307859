"""A database of its own, the real Redis on a queue of its own, and settings with short leases: for the
duties that act on every job they see (the reconciler, the scheduler)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from shared.settings import Settings
from tests.support import services


@pytest.fixture
def own_db() -> Iterator[str]:
    with services.migrated_database() as url:
        yield url


@pytest.fixture
def settings(own_db, redis_url, tmp_path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=own_db,
        broker_url=redis_url,
        queue_name=f"lorabake-test-{uuid.uuid4().hex[:8]}",
        lease_seconds=1,
        lease_renew_seconds=0.5,
        requeue_after_seconds=0.5,
        max_attempts=2,
    )


@pytest.fixture
def broker(settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.broker_url)
    yield client
    client.delete(settings.queue_name)
    client.close()
