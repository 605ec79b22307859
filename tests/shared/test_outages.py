"""Telling an outage from any other error, with the errors the real drivers raise; retrying through one."""

from __future__ import annotations

import time

import boto3
import pytest
import redis
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import ClientError
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from shared.errors import LorabakeError
from shared.outages import ServiceUnavailable, is_outage, outage_of
from shared.retrying import OutageOutlasted, retry_outages
from tests.support.services import free_port


def raised(call) -> BaseException:  # noqa: ANN001
    try:
        call()
    except BaseException as exc:  # noqa: BLE001
        return exc
    raise AssertionError("expected an error")


def client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def test_a_database_that_refuses_connections_is_an_outage():
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    exc = raised(lambda: engine.connect())
    assert outage_of(exc) == "database"


def test_a_query_error_is_not_an_outage(pg_url):
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        exc = raised(lambda: conn.execute(text("SELECT no_such_column FROM jobs")))
    assert not is_outage(exc)
    assert not is_outage(IntegrityError("INSERT", {}, Exception("duplicate key")))


def test_storage_that_is_down_or_overloaded_is_an_outage_and_a_missing_object_is_not():
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=1),
    )
    assert outage_of(raised(lambda: s3.head_bucket(Bucket="b"))) == "storage"
    assert outage_of(client_error(503, "SlowDown")) == "storage"
    assert outage_of(client_error(500, "InternalError")) == "storage"
    assert not is_outage(client_error(404, "NoSuchKey"))
    assert not is_outage(client_error(403, "AccessDenied"))
    # boto3 raises an error of its own inside its handler of the ClientError: the cause is still seen
    wrapped = S3UploadFailedError("Failed to upload x")
    wrapped.__context__ = client_error(503, "ServiceUnavailable")
    assert outage_of(wrapped) == "storage"


def test_a_broker_that_refuses_connections_is_an_outage():
    client = redis.Redis(port=free_port(), socket_connect_timeout=1)
    assert outage_of(raised(client.ping)) == "broker"


def test_our_own_errors_are_not_outages_except_service_unavailable():
    assert not is_outage(LorabakeError("bad zip"))
    assert not is_outage(ValueError("x"))
    assert outage_of(ServiceUnavailable("database", "down")) == "database"


def test_retry_outages_waits_out_a_short_outage():
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    calls = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            engine.connect()  # refused: a real outage error
        return "done"

    assert retry_outages("do it", flaky, bound=10) == "done"
    assert len(calls) == 3 and calls[2] > calls[0]  # it waited between tries


def test_retry_outages_gives_up_after_the_bound_and_never_retries_other_errors():
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    started = time.monotonic()
    with pytest.raises(OutageOutlasted) as info:
        retry_outages("reach the database", engine.connect, bound=0.6)
    assert info.value.service == "database" and time.monotonic() - started < 5
    calls = []

    def broken() -> None:
        calls.append(1)
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        retry_outages("do it", broken, bound=10)
    assert calls == [1]
