"""Multipart upload with a hard size limit, streamed to disk.

Starlette's form parser already streams file parts into temporary files; we only wrap the ASGI receive
channel so a body over the limit is cut off as it arrives (a lying or absent Content-Length included),
instead of after it has filled the disk.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message

from api.errors import refuse_nul
from shared.errors import LorabakeError, PayloadTooLargeError


@dataclass
class ReceivedFile:
    path: Path
    filename: str
    size: int
    sha256: str


def limited_request(request: Request, max_bytes: int) -> Request:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(
            f"upload is {int(declared)} bytes; the limit is {max_bytes}", details={"limit_bytes": max_bytes}
        )
    received = 0
    upstream = request.receive

    async def receive() -> Message:
        nonlocal received
        message = await upstream()
        received += len(message.get("body", b""))
        if received > max_bytes:
            raise PayloadTooLargeError(
                f"upload exceeds the limit of {max_bytes} bytes", details={"limit_bytes": max_bytes}
            )
        return message

    return Request(request.scope, receive)


JSON_BODY_LIMIT = 1024 * 1024  # configs and caption edits are small; a larger body is not one of ours


async def read_json_object(request: Request, max_bytes: int = JSON_BODY_LIMIT) -> dict:
    """The body as a JSON object, read under a byte limit; bad JSON is a 422 naming the body, not a 500."""
    body = await limited_request(request, max_bytes).body()
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise LorabakeError(
            f"the body is not valid JSON: {exc}",
            code="invalid_request",
            status_code=422,
            details={"fields": [{"field": "body", "message": "not valid JSON"}]},
        ) from exc
    if not isinstance(data, dict):
        raise LorabakeError(
            "the body must be a JSON object",
            code="invalid_request",
            status_code=422,
            details={"fields": [{"field": "body", "message": "not a JSON object"}]},
        )
    refuse_nul(data, "")
    return data


def save_upload(upload: UploadFile, directory: Path) -> ReceivedFile:
    """Copies an uploaded file to a named temp file in `directory`, hashing it on the way."""
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".zip", delete=False) as out:
        upload.file.seek(0)
        while chunk := upload.file.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return ReceivedFile(Path(out.name), printable_name(upload.filename), size, digest.hexdigest())


def printable_name(filename: str | None) -> str:
    """The client's file name as we keep it: control characters (NUL above all) removed."""
    name = "".join(ch for ch in (filename or "") if ch.isprintable())[:300].strip()
    return name or "dataset.zip"


def require_file(form_value: object, field: str) -> UploadFile:
    if not isinstance(form_value, UploadFile):
        raise LorabakeError(
            f"multipart field '{field}' must be a file",
            code="missing_field",
            details={"field": field},
            status_code=422,
        )
    return form_value
