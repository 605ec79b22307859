"""The API in-process (TestClient) on the real Postgres, Redis and S3 server; a fresh bucket per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from shared.db.keys import create_api_key
from shared.db.session import session_scope
from tests.support.stack import settings_from_env, stack_env


@pytest.fixture
def env(pg_url, redis_url, s3_server, bucket, tmp_path, models_dir) -> dict[str, str]:
    return stack_env(
        pg_url=pg_url,
        redis_url=redis_url,
        s3_url=s3_server.url,
        bucket=bucket,
        data_dir=tmp_path / "data",
        models_dir=models_dir,
        # the session's database is shared with other tests' jobs: no reconciler acts on them here
        reconcile_interval_seconds="0",
    )


@pytest.fixture
def client(env) -> Iterator[TestClient]:
    with TestClient(create_app(settings_from_env(env))) as test_client:
        yield test_client


@pytest.fixture
def key(pg_url) -> str:
    """A key of a fresh owner: the database is shared by the whole session."""
    with session_scope(pg_url) as session:
        return create_api_key(session, owner=f"owner-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def headers(key) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
