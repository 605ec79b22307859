"""Which errors mean that a server is down, unreachable or overloaded (the database, object storage, the
broker), as opposed to a bug or bad input.

The API answers them 503 with Retry-After; the worker retries them (shared.retrying) and never fails a job
for one. Only the driver libraries' own exception types are looked at, along the whole cause chain, so a
wrapped error (boto3's S3UploadFailedError around a ClientError, ours around either) is still recognized.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Literal

from shared.errors import LorabakeError

Service = Literal["database", "storage", "broker"]

# S3 error codes that say "try again later", whatever the HTTP status says.
_S3_RETRY_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}


class ServiceUnavailable(LorabakeError):
    """A server we depend on is down; the client should retry after `retry_after` seconds."""

    status_code = 503
    code = "service_unavailable"

    def __init__(self, service: Service, message: str, retry_after: int = 5) -> None:
        super().__init__(message, code=f"{service}_unavailable", details={"service": service})
        self.service = service
        self.retry_after = retry_after


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _database_outage(exc: BaseException) -> bool:
    import psycopg
    from sqlalchemy import exc as sa

    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):  # raw psycopg (and its pool)
        return True

    if isinstance(exc, sa.TimeoutError | sa.DisconnectionError):  # pool exhausted, connection dropped
        return True
    if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
        return True
    # OperationalError: the server refused, closed or timed out (statement_timeout), SQLite was locked
    return isinstance(exc, sa.OperationalError | sa.InterfaceError)


def _storage_outage(exc: BaseException) -> bool:
    try:
        from botocore import exceptions as bc
    except ImportError:  # boto3 is a core dependency; this only guards odd installs
        return False
    if isinstance(exc, bc.ConnectionError | bc.HTTPClientError | bc.IncompleteReadError):
        return True  # refused, reset, timed out (connect or read), cut mid-body
    if isinstance(exc, bc.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or status == 429 or error.get("Code") in _S3_RETRY_CODES
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)  # the local store's disk


def _broker_outage(exc: BaseException) -> bool:
    from kombu import exceptions as kombu

    if isinstance(exc, kombu.OperationalError):
        return True
    try:
        from redis import exceptions as redis
    except ImportError:
        return False
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError)


def outage_of(exc: BaseException) -> Service | None:
    """The service `exc` says is unavailable, or None when it is any other kind of error."""
    for link in _chain(exc):
        if isinstance(link, ServiceUnavailable):
            return link.service
        if _database_outage(link):
            return "database"
        if _storage_outage(link):
            return "storage"
        if _broker_outage(link):
            return "broker"
    return None


def is_outage(exc: BaseException) -> bool:
    return outage_of(exc) is not None
