"""Every error leaves the API as {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import json
import logging
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from shared.errors import LorabakeError
from shared.outages import ServiceUnavailable, outage_of

log = logging.getLogger("lorabake.api")
M = TypeVar("M", bound=BaseModel)
RETRY_AFTER_SECONDS = 5


def error_response(
    status: int, code: str, message: str, details: dict | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=status, headers=headers)


def field_errors(exc: ValidationError | RequestValidationError, prefix: str = "") -> list[dict[str, str]]:
    fields = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        fields.append(
            {"field": f"{prefix}{loc}" if loc else prefix.rstrip("."), "message": err.get("msg", "")}
        )
    return fields


def describe_fields(fields: list[dict[str, str]]) -> str:
    return "; ".join(f"{f['field']}: {f['message']}" for f in fields)


def nul_path(value: object, path: str) -> str | None:
    """The path of the first string (or key) in decoded JSON that holds a NUL character, which no text
    column can store; None when there is none."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return where
            found = nul_path(item, where)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = nul_path(item, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None


def refuse_nul(value: object, path: str, code: str = "invalid_request") -> None:
    where = nul_path(value, path)
    if where is not None:
        raise LorabakeError(
            f"{where} contains a NUL character (\\u0000)",
            code=code,
            details={"fields": [{"field": where, "message": "contains a NUL character"}]},
            status_code=422,
        )


def validate_json_model(model: type[M], raw: object, field: str, code: str) -> M:
    """`raw` (JSON text or already-decoded JSON) as `model`; every failure is a 422 naming `field` (and the
    sub-fields at fault, as `field.sub`)."""
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise LorabakeError(
                f"{field} is not valid JSON: {exc}", code=code, details={"field": field}, status_code=422
            ) from exc
    if not isinstance(raw, dict):
        raise LorabakeError(
            f"{field} must be a JSON object", code=code, details={"field": field}, status_code=422
        )
    refuse_nul(raw, field, code)
    return validated(model, raw, field, code, prefix=f"{field}.")


def validated(model: type[M], data: dict, what: str, code: str, prefix: str = "") -> M:
    """`data` as `model`; a failure is a 422 `code` listing each field at fault (`prefix` + its path)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = field_errors(exc, prefix=prefix)
        raise LorabakeError(
            f"invalid {what}: {describe_fields(fields)}",
            code=code,
            details={"fields": fields},
            status_code=422,
        ) from exc


def _internal_error(request: Request, exc: BaseException) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    log.error("unhandled error (request %s)", request_id, exc_info=exc)
    return error_response(
        500, "internal_error", "an unexpected error occurred; it has been logged", {"request_id": request_id}
    )


def unavailable_response(service: str, message: str, retry_after: int = RETRY_AFTER_SECONDS) -> JSONResponse:
    return error_response(
        503, f"{service}_unavailable", message, {"service": service}, {"Retry-After": str(retry_after)}
    )


async def _dependency_error(request: Request, exc: Exception) -> JSONResponse:
    """Errors of the database, storage and broker libraries: an outage (or any storage refusal: our own
    requests to it are well-formed, so it is the server's state) is a 503 with Retry-After; anything
    else from them is a bug of ours, a 500."""
    if _is_nul_refusal(exc):
        return _nul_response()
    service = outage_of(exc)
    if service is None and _is_storage_error(exc):
        service = "storage"
    if service is None:
        return _internal_error(request, exc)
    log.warning(
        "%s unavailable (request %s): %s: %s",
        service,
        getattr(request.state, "request_id", None),
        type(exc).__name__,
        str(exc)[:300],
    )
    return unavailable_response(service, f"the {service} is unavailable right now; try again shortly")


def _is_nul_refusal(exc: BaseException) -> bool:
    """psycopg refuses NUL characters in text values: whatever carried one there was bad input."""
    return any("NUL (0x00)" in str(e) for e in (exc, exc.__cause__, exc.__context__) if e is not None)


def _nul_response() -> JSONResponse:
    return error_response(
        422, "invalid_text", "a text value contains a NUL character (\\u0000), which cannot be stored"
    )


def _is_storage_error(exc: BaseException) -> bool:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, BotoCoreError | ClientError | Boto3Error)


def _dependency_error_types() -> tuple[type[Exception], ...]:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError
    from kombu.exceptions import KombuError
    from psycopg import Error as PsycopgError
    from redis.exceptions import RedisError
    from sqlalchemy.exc import SQLAlchemyError

    return (SQLAlchemyError, PsycopgError, BotoCoreError, ClientError, Boto3Error, KombuError, RedisError)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of this path answers (for a 405's Allow header)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.routes:
        if route.matches(request.scope)[0] != Match.NONE:  # the path matches, whatever the method
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LorabakeError)
    async def _lorabake(request: Request, exc: LorabakeError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        retry_after = getattr(exc, "retry_after", None)  # outages (503) and limits (429) say when to retry
        if isinstance(exc, ServiceUnavailable) or retry_after is not None:
            headers = {"Retry-After": str(retry_after)}
        return error_response(exc.status_code, exc.code, exc.message, exc.details, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = field_errors(exc)
        return error_response(422, "validation_error", describe_fields(fields), {"fields": fields})

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI could not parse a JSON or form body: ours say 422 for that
            fields = [{"field": "body", "message": str(exc.detail)}]
            return error_response(422, "invalid_request", f"body: {exc.detail}", {"fields": fields})
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = exc.headers
        if exc.status_code == 405:  # Starlette names the methods of the first route of the path only
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    for error_type in _dependency_error_types():
        app.add_exception_handler(error_type, _dependency_error)  # type: ignore[arg-type]

    @app.exception_handler(ValueError)
    async def _value(request: Request, exc: ValueError) -> JSONResponse:
        return _nul_response() if _is_nul_refusal(exc) else _internal_error(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _internal_error(request, exc)
