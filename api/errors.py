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

log = logging.getLogger("lorabake.api")
M = TypeVar("M", bound=BaseModel)


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
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        fields = field_errors(exc, prefix=f"{field}.")
        raise LorabakeError(
            f"invalid {field}: {describe_fields(fields)}",
            code=code,
            details={"fields": fields},
            status_code=422,
        ) from exc


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LorabakeError)
    async def _lorabake(request: Request, exc: LorabakeError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return error_response(exc.status_code, exc.code, exc.message, exc.details, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = field_errors(exc)
        return error_response(422, "validation_error", describe_fields(fields), {"fields": fields})

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", None)
        log.exception("unhandled error (request %s)", request_id)
        return error_response(
            500,
            "internal_error",
            "an unexpected error occurred; it has been logged",
            {"request_id": request_id},
        )
