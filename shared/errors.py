"""Errors that carry their own HTTP meaning.

Raised anywhere (API, intake, worker) and rendered by the API as
``{"error": {"code", "message", "details"}}``; the worker stores ``code`` + ``message`` on the job row.
"""

from __future__ import annotations

from typing import Any


class LorabakeError(Exception):
    """Base error: a stable machine-readable ``code``, a human ``message`` and optional ``details``."""

    status_code: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.details: dict[str, Any] = details or {}

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class DatasetError(LorabakeError):
    """The uploaded dataset is unusable; ``details["entry"]`` names the file at fault when there is one."""

    status_code = 422
    code = "invalid_dataset"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        entry: str | None = None,
        status_code: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        merged = dict(details or {})
        if entry is not None:
            merged["entry"] = entry
        super().__init__(message, code=code, details=merged, status_code=status_code)


class PayloadTooLargeError(LorabakeError):
    status_code = 413
    code = "payload_too_large"


class NotFoundError(LorabakeError):
    status_code = 404
    code = "not_found"


class ConflictError(LorabakeError):
    status_code = 409
    code = "conflict"


class AuthError(LorabakeError):
    status_code = 401
    code = "unauthorized"
