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
        # the session's database is shared with other tests' jobs: no reconciler or sweeper acts on them here
        reconcile_interval_seconds="0",
        retention_sweep_seconds="0",
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


# Base models the session's catalogue does not get from the tiny models on disk, recorded as a worker holding
# them would report them (the API reads only the catalogue): a FLUX.1 dev single file and an SDXL one.
FLUX_MODEL = "flux1-dev.safetensors"
SDXL_MODEL = "sdxl/sd_xl_base_1.0.safetensors"


@pytest.fixture(scope="session")
def catalogue_extras(pg_url) -> dict[str, str]:
    from shared.catalogue.records import record_models
    from shared.catalogue.scan import ModelEntry

    entries = [
        ModelEntry(FLUX_MODEL, "flux1", None, "single_file", "local", 23_802_932_552),
        ModelEntry(SDXL_MODEL, "sdxl", "epsilon", "single_file", "local", 6_938_078_334),
    ]
    with session_scope(pg_url) as session:
        record_models(session, "tests:catalogue-extras", entries)
    return {"flux1": FLUX_MODEL, "sdxl": SDXL_MODEL}


@pytest.fixture
def flux_model(catalogue_extras) -> str:
    return catalogue_extras["flux1"]


@pytest.fixture
def sdxl_model(catalogue_extras) -> str:
    return catalogue_extras["sdxl"]
