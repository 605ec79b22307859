"""What every resource's routes share in their responses: the error body, and its OpenAPI documentation."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from shared.resources import ErrorBody


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` documenting our error body for these status codes."""
    return {code: {"model": ErrorResponse} for code in codes}
