"""Schemathesis over the running API's own /openapi.json, as an outside tester runs it: every operation with
generated and malformed inputs, with a key; no 5xx, every status code, content type, body and header as
documented, malformed input refused. (Schema-valid input that our semantic checks refuse, such as a cursor
naming no row, a config without base_model or bytes that are no zip, is a documented 422 and not counted.)"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from tests.e2e.conftest import api_alone
from tests.support.client import Stack

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
    with api_alone(
        "openapi",
        redis_url=redis_url,
        s3_server=s3_server,
        models_dir=models_dir,
        tmp_path_factory=tmp_path_factory,
    ) as stack:
        yield stack


def _served_schema() -> dict:
    """The OpenAPI document the API serves, built the way `lorabake api` builds it (loaded at collection,
    so each operation is a test of its own)."""
    import tempfile

    from api.app import create_app
    from shared.settings import Settings

    with tempfile.TemporaryDirectory() as data:
        served = create_app(Settings(data_dir=data)).openapi()
    # Every call carries the harness's key (call_and_validate's headers), so the bearer requirement is left
    # out: schemathesis would otherwise send malformed Authorization values that the key then replaces, and
    # count the (valid) request's 200 as "malformed input accepted". Keys are tested in test_keys_api.py.
    served["components"].pop("securitySchemes", None)
    for operations in served["paths"].values():
        for operation in operations.values():
            operation.pop("security", None)
    return served


schema = schemathesis.openapi.from_dict(_served_schema())


@schema.parametrize()
@settings(
    max_examples=12, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)
def test_every_operation_answers_as_documented(case, running_api):
    served = httpx.get(f"{running_api.url}/openapi.json").json()
    assert (
        served["paths"].keys() == schema.raw_schema["paths"].keys()
    )  # the document tested is the one served
    case.call_and_validate(base_url=running_api.url, headers=running_api.headers, checks=CHECKS, timeout=60)
