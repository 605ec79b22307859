"""Schemathesis over the running API's own /openapi.json, as an outside tester runs it: every operation with
generated and malformed inputs, with a key; no 5xx, every status code, content type, body and header as
documented, malformed input refused. (Schema-valid input that our semantic checks refuse, such as a cursor
naming no row, a config without base_model or bytes that are no zip, is a documented 422 and not counted.)"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from tests.support import services
from tests.support.client import Stack
from tests.support.stack import process_env, stack_env

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.negative_data_rejection,
    checks.missing_required_header,
]


@pytest.fixture(scope="module")
def running_api(redis_url, s3_server, models_dir, tmp_path_factory) -> Iterator[Stack]:
    from shared.db import get_engine, session_scope
    from shared.keys import create_api_key
    from shared.migrate import upgrade

    db_url, db_name = services.create_pg_database()
    upgrade(db_url)
    s3_server.client().create_bucket(Bucket="openapi-lorabake")
    env = process_env(
        stack_env(
            pg_url=db_url,
            redis_url=redis_url,
            s3_url=s3_server.url,
            bucket="openapi-lorabake",
            data_dir=tmp_path_factory.mktemp("openapi-data"),
            models_dir=models_dir,
        )
    )
    with session_scope(db_url) as session:
        key = create_api_key(session, owner="schemathesis")
    port = services.free_port()
    log = tmp_path_factory.mktemp("openapi-logs") / "api.log"
    proc = services.start_process(
        [sys.executable, "-m", "lorabake.cli", "api", "--port", str(port)], env, log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        services.wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, "API", proc)
        yield Stack(url, key, env)
    finally:
        services.stop_process(proc)
        print(log.read_text(errors="replace")[-4000:])
        get_engine(db_url).dispose()
        services.drop_pg_database(db_name)


def _served_schema() -> dict:
    """The OpenAPI document the API serves, built the way `lorabake api` builds it (loaded at collection,
    so each operation is a test of its own)."""
    import tempfile

    from api.app import create_app
    from shared.settings import Settings

    with tempfile.TemporaryDirectory() as data:
        return create_app(Settings(data_dir=data)).openapi()


schema = schemathesis.openapi.from_dict(_served_schema())


@schema.parametrize()
@settings(max_examples=12, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case, running_api):
    served = httpx.get(f"{running_api.url}/openapi.json").json()
    assert (
        served["paths"].keys() == schema.raw_schema["paths"].keys()
    )  # the document tested is the one served
    case.call_and_validate(base_url=running_api.url, headers=running_api.headers, checks=CHECKS, timeout=60)
